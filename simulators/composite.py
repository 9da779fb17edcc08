"""Charging profiles and the composite schedule (OCPP 2.0.1 K01, K08, K09, K10). Pure: no I/O, no clock.

The station simulator keeps its installed profiles in a :class:`ProfileStore` and asks it for the
limit in force at a moment (:meth:`ProfileStore.limit_w`) or over a window
(:meth:`ProfileStore.composite`). Profiles are read from their wire form (camelCase JSON).

How the composite is formed (OCPP 2.0.1 Part 2, section K "Smart Charging" and use case K08):
- within one purpose the valid profile with the highest ``stackLevel`` wins; a profile is valid at
  ``t`` when ``validFrom <= t < validTo`` and its schedule has a period in force at ``t`` (an
  Absolute schedule past its ``duration`` no longer counts, so a lower stack level shows through);
- ``TxProfile`` overrules ``TxDefaultProfile`` (the transaction layer);
- the result is the minimum of the transaction layer, ``ChargingStationMaxProfile`` and
  ``ChargingStationExternalConstraints``;
- the same id replaces a profile (K01.FR.05); another id in the same slot (EVSE, purpose, stack
  level, and transaction for a TxProfile) with overlapping validity is rejected (K01.FR.06/.39);
- limits in A become W as ``limit * phases * 230 V`` (phases: the period's ``numberPhases``,
  default 3, capped by the EVSE's phases); a negative W limit means discharge.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.clock import parse_rfc3339, to_rfc3339

VOLTAGE_V = 230.0
DEFAULT_PHASES = 3
_RECURRENCE_S = {"Daily": 86_400, "Weekly": 7 * 86_400}


class ProfileError(ValueError):
    """A profile that the station rejects; the message says why (sent as statusInfo.reasonCode)."""


class Purpose(enum.StrEnum):
    MAX = "ChargingStationMaxProfile"
    EXTERNAL = "ChargingStationExternalConstraints"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


@dataclass(frozen=True, slots=True)
class Period:
    start_s: int
    limit: float
    number_phases: int | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    id: int
    evse_id: int
    stack_level: int
    purpose: Purpose
    kind: str  # Absolute | Relative | Recurring
    unit: str  # W | A
    periods: tuple[Period, ...]
    start_schedule: datetime | None = None
    duration_s: int | None = None
    recurrency: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Transaction:
    """The transaction running on an EVSE: Relative schedules count from its start."""

    id: str
    started: datetime


def parse_profile(evse_id: int, data: Mapping[str, Any]) -> Profile:
    """Read a wire-form ``chargingProfile`` set on ``evse_id``; raise ProfileError when invalid."""
    try:
        purpose = Purpose(data["chargingProfilePurpose"])
        schedules = data["chargingSchedule"]
        sched = schedules[0] if isinstance(schedules, list) else schedules
        periods = tuple(
            Period(int(p["startPeriod"]), float(p["limit"]), p.get("numberPhases"))
            for p in sched["chargingSchedulePeriod"]
        )
        profile = Profile(
            id=int(data["id"]),
            evse_id=evse_id,
            stack_level=int(data["stackLevel"]),
            purpose=purpose,
            kind=str(data["chargingProfileKind"]),
            unit=str(sched["chargingRateUnit"]),
            periods=periods,
            start_schedule=parse_rfc3339(sched["startSchedule"]) if sched.get("startSchedule") else None,
            duration_s=int(sched["duration"]) if sched.get("duration") is not None else None,
            recurrency=data.get("recurrencyKind"),
            valid_from=parse_rfc3339(data["validFrom"]) if data.get("validFrom") else None,
            valid_to=parse_rfc3339(data["validTo"]) if data.get("validTo") else None,
            transaction_id=data.get("transactionId"),
            raw=dict(data),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProfileError(f"MalformedProfile: {exc}") from exc
    _check_shape(profile)
    return profile


def _check_shape(p: Profile) -> None:
    if not p.periods:
        raise ProfileError("NoChargingSchedulePeriods")
    if p.periods[0].start_s != 0:
        raise ProfileError("FirstStartPeriodNotZero")  # K01.FR.31
    if any(b.start_s <= a.start_s for a, b in zip(p.periods, p.periods[1:], strict=False)):
        raise ProfileError("PeriodsOutOfOrder")  # K01.FR.35
    if p.unit not in ("W", "A"):
        raise ProfileError("UnsupportedChargingRateUnit")  # K01.FR.26
    if p.kind in ("Absolute", "Recurring") and p.start_schedule is None:
        raise ProfileError("MissingStartSchedule")  # K01.FR.40
    if p.kind == "Relative" and p.start_schedule is not None:
        raise ProfileError("ExtraneousStartSchedule")  # K01.FR.41
    if p.kind == "Recurring" and p.recurrency not in _RECURRENCE_S:
        raise ProfileError("MissingRecurrencyKind")
    if p.purpose is Purpose.MAX and p.evse_id != 0:
        raise ProfileError("MaxProfileEvseIdNotZero")  # K01.FR.03
    if p.purpose is Purpose.MAX and p.kind == "Relative":
        raise ProfileError("MaxProfileCannotBeRelative")  # K01.FR.38
    if p.purpose is Purpose.TX and p.evse_id <= 0:
        raise ProfileError("TxProfileEvseIdNotPositive")  # K01.FR.16
    if p.purpose is Purpose.TX and not p.transaction_id:
        raise ProfileError("TxProfileMissingTransactionId")  # K01.FR.03


def period_limit_w(period: Period, unit: str, evse_phases: int) -> float:
    """A period's limit in W; A limits use the period's phases (default 3) on a 230 V supply."""
    if unit == "W":
        return period.limit
    phases = min(period.number_phases or DEFAULT_PHASES, evse_phases)
    return period.limit * phases * VOLTAGE_V


def _schedule_start(
    p: Profile, t: datetime, tx: Transaction | None, anchor: datetime | None = None
) -> datetime | None:
    """When the schedule instance in force at ``t`` began, or None when none is.

    ``anchor``: where a Relative schedule starts outside a transaction (a composite schedule's
    start, K08); without one, at ``t`` itself ("now")."""
    if p.kind == "Relative":
        # Relative schedules run from the start of the transaction; outside one, from the anchor.
        if tx is not None:
            return tx.started
        return anchor if anchor is not None else t
    assert p.start_schedule is not None
    if p.kind == "Recurring":
        assert p.recurrency is not None
        every = _RECURRENCE_S[p.recurrency]
        elapsed = (t - p.start_schedule).total_seconds()
        if elapsed < 0:
            return None
        return p.start_schedule + timedelta(seconds=every * (elapsed // every))
    return p.start_schedule


def _applies(p: Profile, t: datetime, tx: Transaction | None) -> bool:
    if p.valid_from is not None and t < p.valid_from:
        return False
    if p.valid_to is not None and t >= p.valid_to:
        return False
    if p.purpose is Purpose.TX:
        # A TxProfile belongs to one transaction and ends with it (K01.FR.03, K01.FR.33).
        return tx is not None and p.transaction_id == tx.id
    return True


def profile_limit_w(
    p: Profile, t: datetime, tx: Transaction | None, evse_phases: int, anchor: datetime | None = None
) -> float | None:
    """The limit (W) ``p`` sets at ``t``, or None when it sets none then (``anchor``: see
    :func:`_schedule_start`)."""
    if not _applies(p, t, tx):
        return None
    start = _schedule_start(p, t, tx, anchor)
    if start is None:
        return None
    offset = (t - start).total_seconds()
    if offset < 0 or (p.duration_s is not None and offset >= p.duration_s):
        return None
    current: Period | None = None
    for period in p.periods:
        if period.start_s <= offset:
            current = period
        else:
            break
    return None if current is None else period_limit_w(current, p.unit, evse_phases)


def _winner(
    profiles: Iterable[Profile], t: datetime, tx: Transaction | None, phases: int, anchor: datetime | None = None
) -> float | None:
    """Highest stack level among the valid profiles of one purpose; an EVSE-specific profile beats
    a station-wide (evseId 0) one of the same stack level."""
    best: tuple[int, int] | None = None
    value: float | None = None
    for p in profiles:
        lim = profile_limit_w(p, t, tx, phases, anchor)
        if lim is None:
            continue
        key = (p.stack_level, 1 if p.evse_id else 0)
        if best is None or key > best:
            best, value = key, lim
    return value


def _breakpoints(p: Profile, start: datetime, end: datetime, tx: Transaction | None) -> set[datetime]:
    """Every moment inside [start, end) at which ``p``'s contribution may change."""
    out: set[datetime] = set()
    for edge in (p.valid_from, p.valid_to):
        if edge is not None and start < edge < end:
            out.add(edge)
    if p.kind == "Relative":
        anchors = [tx.started] if tx is not None else [start]
    elif p.kind == "Recurring":
        assert p.start_schedule is not None and p.recurrency is not None
        every = timedelta(seconds=_RECURRENCE_S[p.recurrency])
        first = _schedule_start(p, start, tx) or p.start_schedule
        anchors = []
        a = first
        while a < end:
            anchors.append(a)
            a += every
    else:
        assert p.start_schedule is not None
        anchors = [p.start_schedule]
    for a in anchors:
        offsets = [q.start_s for q in p.periods] + ([p.duration_s] if p.duration_s is not None else [])
        for s in offsets:
            moment = a + timedelta(seconds=s)
            if start < moment < end:
                out.add(moment)
    return out


def limit_source(p: Profile) -> str:
    """Where a profile's limit comes from (chargingLimitSource, K09): external constraints from a
    local energy management system, everything else from the CSMS (the CSO)."""
    return "EMS" if p.purpose is Purpose.EXTERNAL else "CSO"


def _validity_overlaps(a: Profile, b: Profile, now: datetime | None) -> bool:
    """Whether the validity periods [validFrom, validTo) of ``a`` and ``b`` share a moment; a
    missing validFrom means from ``now`` (unbounded without it), a missing validTo for ever."""
    starts = [v for v in (a.valid_from, b.valid_from, now) if v is not None]
    ends = [v for v in (a.valid_to, b.valid_to) if v is not None]
    return not starts or not ends or max(starts) < min(ends)


@dataclass(frozen=True, slots=True)
class CompositePeriod:
    start_s: int  # seconds after the composite's start
    limit_w: float | None  # None: no profile limits this stretch


@dataclass(slots=True)
class ProfileStore:
    """The profiles installed on one charging station, by EVSE (0 = the whole station)."""

    evse_phases: dict[int, int]
    profiles: dict[int, Profile] = field(default_factory=dict)  # by profile id

    def install(self, profile: Profile, tx: Transaction | None, now: datetime | None = None) -> None:
        """Install a parsed profile after the checks that need the station's state (K01).

        The same id replaces the installed profile (K01.FR.05). A profile with another id but the
        same purpose and stack level on the same EVSE (and, for a TxProfile, the same transaction)
        whose validity overlaps is rejected: two profiles never compete at one stack level
        (K01.FR.06, K01.FR.39). ``now``: where a profile without validFrom starts to be valid (and
        one whose validTo has passed no longer counts); without it, validity is unbounded below."""
        if profile.evse_id != 0 and profile.evse_id not in self.evse_phases:
            raise ProfileError("EvseDoesNotExist")  # K01.FR.28
        if profile.purpose is Purpose.TX:
            if tx is None:
                raise ProfileError("TxProfileEvseHasNoActiveTransaction")  # K01.FR.09
            if profile.transaction_id != tx.id:
                raise ProfileError("TxProfileTransactionNotOnEvse")  # K01.FR.33
        for old in self.profiles.values():
            same_slot = (
                old.id != profile.id
                and old.evse_id == profile.evse_id
                and old.purpose is profile.purpose
                and old.stack_level == profile.stack_level
                and (profile.purpose is not Purpose.TX or old.transaction_id == profile.transaction_id)
            )
            if same_slot and _validity_overlaps(old, profile, now):
                raise ProfileError(
                    f"DuplicateProfile: profile {old.id} has purpose {old.purpose} and stackLevel "
                    f"{old.stack_level} on evseId {old.evse_id}"
                )
        self.profiles[profile.id] = profile

    def clear(
        self,
        profile_id: int | None = None,
        evse_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> int:
        """Remove the profiles matching every given criterion (K10); return how many went.
        ChargingStationExternalConstraints are never cleared: they come from a local energy
        management system, not from the CSMS (K10, K01.FR.22)."""
        gone = [
            p.id
            for p in self.profiles.values()
            if p.purpose is not Purpose.EXTERNAL
            and (profile_id is None or p.id == profile_id)
            and (evse_id is None or p.evse_id == evse_id)
            and (purpose is None or p.purpose == purpose)
            and (stack_level is None or p.stack_level == stack_level)
        ]
        for pid in gone:
            del self.profiles[pid]
        return len(gone)

    def end_transaction(self, tx_id: str) -> None:
        """A TxProfile lives only as long as its transaction."""
        for p in [p for p in self.profiles.values() if p.purpose is Purpose.TX and p.transaction_id == tx_id]:
            del self.profiles[p.id]

    def matching(
        self,
        evse_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
        ids: Iterable[int] | None = None,
        sources: Iterable[str] | None = None,
    ) -> list[Profile]:
        """Profiles matching GetChargingProfiles criteria (K09); ``sources``: the
        chargingLimitSource values asked for (see :func:`limit_source`)."""
        wanted = set(ids) if ids is not None else None
        from_sources = set(sources) if sources is not None else None
        return [
            p
            for p in self.profiles.values()
            if (from_sources is None or limit_source(p) in from_sources)
            and (evse_id is None or p.evse_id == evse_id)
            and (purpose is None or p.purpose == purpose)
            and (stack_level is None or p.stack_level == stack_level)
            and (wanted is None or p.id in wanted)
        ]

    def _relevant(self, evse_id: int) -> list[Profile]:
        if evse_id == 0:
            return [p for p in self.profiles.values() if p.evse_id == 0]
        return [p for p in self.profiles.values() if p.evse_id in (0, evse_id)]

    def limit_w(
        self, evse_id: int, t: datetime, tx: Transaction | None, anchor: datetime | None = None
    ) -> float | None:
        """The composite limit (W) for ``evse_id`` at ``t``; None when no profile limits it.
        ``anchor``: where Relative schedules start when there is no transaction."""
        phases = self.evse_phases.get(evse_id, DEFAULT_PHASES)
        relevant = self._relevant(evse_id)
        by_purpose: dict[Purpose, list[Profile]] = {pp: [] for pp in Purpose}
        for p in relevant:
            by_purpose[p.purpose].append(p)
        tx_layer = _winner(by_purpose[Purpose.TX], t, tx, phases, anchor)
        if tx_layer is None:
            tx_layer = _winner(by_purpose[Purpose.TX_DEFAULT], t, tx, phases, anchor)
        limits = [
            v
            for v in (
                tx_layer,
                _winner(by_purpose[Purpose.MAX], t, tx, phases, anchor),
                _winner(by_purpose[Purpose.EXTERNAL], t, tx, phases, anchor),
            )
            if v is not None
        ]
        return min(limits) if limits else None

    def next_change(self, after: datetime, within: timedelta, txs: Mapping[int, Transaction | None]) -> datetime | None:
        """The first moment in (after, after + within) at which any installed profile may change
        the limit of an EVSE, so the station can switch exactly then (real chargers do)."""
        end = after + within
        moments: set[datetime] = set()
        for p in self.profiles.values():
            if p.evse_id == 0:
                # A profile on evseId 0 applies to every EVSE: a Relative one runs from each
                # EVSE's own transaction start.
                for tx in {None, *txs.values()}:
                    moments |= _breakpoints(p, after, end, tx)
            else:
                moments |= _breakpoints(p, after, end, txs.get(p.evse_id))
        return min(moments) if moments else None

    def station_max_w(self, t: datetime, anchor: datetime | None = None) -> float | None:
        """The cap on the whole station's import: ChargingStationMaxProfile (and external
        constraints) on evseId 0. A TxDefaultProfile on evseId 0 is *not* a station total: it is
        the default of every EVSE (K01.FR.?), and applies per EVSE through :meth:`limit_w`."""
        phases = self.evse_phases.get(0, DEFAULT_PHASES)
        station = [p for p in self.profiles.values() if p.evse_id == 0]
        limits = [
            v
            for v in (
                _winner([p for p in station if p.purpose == Purpose.MAX], t, None, phases, anchor),
                _winner([p for p in station if p.purpose == Purpose.EXTERNAL], t, None, phases, anchor),
            )
            if v is not None
        ]
        return min(limits) if limits else None

    def composite(
        self, evse_id: int, start: datetime, duration_s: int, tx: Transaction | None
    ) -> list[CompositePeriod]:
        """The composite schedule over [start, start + duration_s), merged where the limit holds."""
        end = start + timedelta(seconds=duration_s)
        moments: set[datetime] = {start}
        for p in self._relevant(evse_id):
            moments |= _breakpoints(p, start, end, tx)
        out: list[CompositePeriod] = []
        for m in sorted(moments):
            # evseId 0 asks for the station's own limit (K08): its caps, not the per-EVSE default
            # a TxDefaultProfile on evseId 0 sets. Without a transaction a Relative schedule runs
            # from the composite's start (as _breakpoints anchors it), not from each moment.
            if evse_id == 0:
                lim = self.station_max_w(m, anchor=start)
            else:
                lim = self.limit_w(evse_id, m, tx, anchor=start)
            if out and out[-1].limit_w == lim:
                continue
            out.append(CompositePeriod(int((m - start).total_seconds()), lim))
        return out


def composite_to_wire(
    periods: list[CompositePeriod],
    *,
    evse_id: int,
    start: datetime,
    duration_s: int,
    unit: str,
    evse_phases: int,
    default_limit_w: float,
    max_discharge_w: float | None = None,
) -> dict[str, Any]:
    """A GetCompositeSchedule ``schedule`` (K08); stretches without a profile show the EVSE's maximum.

    What the EVSE can do bounds what it reports: a limit above its maximum (``default_limit_w``)
    shows that maximum, a discharge limit beyond ``max_discharge_w`` (when given; 0 for an EVSE
    that cannot discharge) shows that much discharge."""
    factor = 1.0 if unit == "W" else 1.0 / (evse_phases * VOLTAGE_V)
    rows = []
    for cp in periods:
        lim = default_limit_w if cp.limit_w is None else min(cp.limit_w, default_limit_w)
        if max_discharge_w is not None and lim < -max_discharge_w:
            lim = -max_discharge_w + 0.0  # no -0.0 on the wire
        row: dict[str, Any] = {"startPeriod": cp.start_s, "limit": round(lim * factor, 1)}
        if unit == "A":
            row["numberPhases"] = evse_phases
        rows.append(row)
    return {
        "evseId": evse_id,
        "duration": duration_s,
        "scheduleStart": to_rfc3339(start),
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": rows,
    }
