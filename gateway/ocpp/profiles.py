"""Plan -> charging profile: the one place that turns a planned power series into an OCPP
SetChargingProfile payload, and decides whether it differs from the one a station already has.

Rules (OCPP 2.0.1 K01):
- one Absolute TxProfile per transaction, with a fixed id and stack level, so each new one
  replaces the last (K01.FR.05: same id replaces) and it dies with the transaction (K01.FR.?);
- W units (the plan is in kW; A would need the phase count and voltage of every EVSE);
- discharge is a negative limit, sent only to EVSEs whose station speaks that dialect
  (``DischargeDialect.NEGATIVE_LIMIT``) and are bidirectional; everything else is clipped at 0;
- periods with the same limit are merged and the schedule is cut to the number of periods the
  station accepts (``PeriodsPerSchedule``); it is re-sent every re-plan anyway.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any

from gateway.clock import to_rfc3339
from gateway.domain import DischargeDialect

LIMIT_RESOLUTION_W = 10.0  # stations round limits anyway; finer steps only cause re-sends
CHANGE_TOLERANCE_W = 100.0  # a new plan this much above the last one (or less) is not re-sent
# The first period reaches back this far before the plan's start. A station's clock is only as
# good as the boot round trip it was set from (B01) or its own NTP: one running behind the
# gateway's would otherwise hold an Absolute profile starting "now" as not yet in force and run
# on its TxDefaultProfile until its clock got there, drawing more than the plan allows meanwhile
# (the site limit is planned on every EVSE obeying its new profile at once).
CLOCK_SKEW_ALLOWANCE_S = 300


def profile_id_for(station_id: str, transaction_id: str) -> int:
    """A stable, positive id per transaction (same id => the station replaces the profile)."""
    return zlib.crc32(f"{station_id}/{transaction_id}".encode()) % 2_000_000_000 + 1


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    limit_w: float


@dataclass(frozen=True, slots=True)
class TxProfile:
    station_id: str
    evse_id: int
    transaction_id: str
    profile_id: int
    stack_level: int
    periods: tuple[Period, ...]
    end: datetime

    def payload(self) -> dict[str, Any]:
        """The SetChargingProfile request payload (camelCase, schema-valid); the schedule starts
        CLOCK_SKEW_ALLOWANCE_S before the first period, which covers that time too."""
        first = self.periods[0].start
        start = first - timedelta(seconds=CLOCK_SKEW_ALLOWANCE_S)

        def offset(p: Period) -> int:
            return 0 if p is self.periods[0] else round((p.start - first).total_seconds()) + CLOCK_SKEW_ALLOWANCE_S

        return {
            "evseId": self.evse_id,
            "chargingProfile": {
                "id": self.profile_id,
                "stackLevel": self.stack_level,
                "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Absolute",
                "transactionId": self.transaction_id,
                "chargingSchedule": [{
                    "id": self.profile_id,
                    "startSchedule": to_rfc3339(start),
                    "duration": max(1, round((self.end - start).total_seconds())),
                    "chargingRateUnit": "W",
                    "chargingSchedulePeriod": [
                        {"startPeriod": offset(p), "limit": p.limit_w} for p in self.periods
                    ],
                }],
            },
        }

    def limit_at(self, when: datetime) -> float | None:
        if when < self.periods[0].start or when >= self.end:
            return None
        current = self.periods[0].limit_w
        for p in self.periods:
            if p.start <= when:
                current = p.limit_w
            else:
                break
        return current


def build_profile(
    *, station_id: str, evse_id: int, transaction_id: str, starts: Sequence[datetime], end: datetime,
    power_kw: Sequence[float], max_charge_kw: float, max_discharge_kw: float, bidirectional: bool,
    dialect: DischargeDialect, stack_level: int, max_periods: int, rise_delay_s: float = 0.0,
) -> TxProfile:
    """``rise_delay_s``: a period that moves the limit away from zero (more import or more export)
    starts this much later than planned (never past the next period's start), one that moves it
    towards zero on time, and one that turns charge into discharge or back goes to 0 on time and
    to its limit late: EVSEs trading power at a boundary, either way, never both take the larger
    share while their stations switch a little apart (see ``move``)."""
    can_discharge = bidirectional and dialect == DischargeDialect.NEGATIVE_LIMIT
    floor_w = -max_discharge_kw * 1000.0 if can_discharge else 0.0
    periods: list[Period] = []
    for start, kw in zip(starts, power_kw, strict=True):
        w = min(max(kw * 1000.0, floor_w), max_charge_kw * 1000.0)
        w = round(w / LIMIT_RESOLUTION_W) * LIMIT_RESOLUTION_W + 0.0
        if periods and (round((start - periods[0].start).total_seconds())
                        == round((periods[-1].start - periods[0].start).total_seconds())):
            # Both would get the same whole-second startPeriod (the one before lasts under a
            # second), which the station rejects (K01.FR.35: increasing). This one wins.
            periods[-1] = Period(periods[-1].start, w)
            if len(periods) > 1 and periods[-2].limit_w == w:
                periods.pop()
            continue
        if periods and periods[-1].limit_w == w:
            continue  # merged with the period before
        periods.append(Period(start, w))
    if not periods:
        periods = [Period(starts[0] if starts else end - timedelta(seconds=1), 0.0)]
    if rise_delay_s > 0:
        periods = _delay_rises(periods, end, rise_delay_s)
    if len(periods) > max_periods:
        end = periods[max_periods].start
        periods = periods[:max_periods]
    return TxProfile(station_id, evse_id, transaction_id, profile_id_for(station_id, transaction_id),
                     stack_level, tuple(periods), end)


class Move(IntEnum):
    """How a limit changes. Site import is the sum of the positive limits, export of the negative
    ones. ``_push`` (gateway/scheduler/mpc.py) sends TOWARD_ZERO changes first: while they travel
    every EVSE is between its old limit and 0. AWAY_FROM_ZERO changes follow once those have
    landed: every EVSE is then between 0 and its new limit. A FLIP (charge <-> discharge) is both:
    to 0 with the first, to its new limit with the second; sent in one go, two flips the opposite
    way (+7 -> -7 and -7 -> +7 kW) landing in the wrong order would import or export 14 kW where
    either plan has 7. So no moment in between passes the old plan's or the new plan's site
    totals. Inside one schedule the same order holds in time (:func:`build_profile`)."""
    TOWARD_ZERO = 0
    FLIP = 1
    AWAY_FROM_ZERO = 2


def move(before_w: float, after_w: float) -> Move:
    if before_w * after_w < 0:
        return Move.FLIP
    if abs(after_w) <= abs(before_w):
        return Move.TOWARD_ZERO
    return Move.AWAY_FROM_ZERO


def _delay_rises(periods: list[Period], end: datetime, delay_s: float) -> list[Period]:
    first = periods[0].start
    out = [periods[0]]
    for i, p in enumerate(periods[1:], start=1):
        kind = move(periods[i - 1].limit_w, p.limit_w)
        if kind != Move.TOWARD_ZERO:
            nxt = periods[i + 1].start if i + 1 < len(periods) else end
            later = min(p.start + timedelta(seconds=delay_s), nxt - timedelta(seconds=1))
            # Whole-second offsets must keep increasing (K01.FR.35): else the change stays on time.
            offset = round((later - first).total_seconds())
            after_last = offset > round((p.start - first).total_seconds())
            # ...and stay before the next one's (round() takes halves to even: x - 1 and x can
            # round alike, two equal startPeriods the station refuses).
            before_next = offset < round((nxt - first).total_seconds())
            if after_last and before_next and later > p.start:
                if kind == Move.FLIP:
                    out.append(Period(p.start, 0.0))  # the old direction stops on time
                p = Period(later, p.limit_w)
        out.append(p)
    return out


def held_at_zero(prof: TxProfile) -> TxProfile:
    """``prof``'s transaction held at 0 W until its end: the first half of a flip (:class:`Move`)."""
    return replace(prof, periods=(Period(prof.periods[0].start, 0.0),))


def safe_profile(
    *, station_id: str, evse_id: int, transaction_id: str, start: datetime, hours: float, limit_kw: float,
    stack_level: int,
) -> TxProfile:
    """A constant, non-negative limit: what a station gets when its planned profile was refused."""
    return TxProfile(station_id, evse_id, transaction_id, profile_id_for(station_id, transaction_id),
                     stack_level, (Period(start, round(limit_kw * 1000.0)),), start + timedelta(hours=hours))


def moves_later(old: TxProfile | None, new: TxProfile, default_w: float, now: datetime) -> list[Move]:
    """How each limit ``new`` sets after ``now`` moves against what the EVSE would run then
    (``old``, else its default ``default_w``), at every boundary of either schedule after ``now``
    in ``new``'s span; moments where nothing changes are left out."""
    same = old if old is not None and old.transaction_id == new.transaction_id else None
    moments = {p.start for p in new.periods if now < p.start < new.end}
    if same is not None:
        moments |= {p.start for p in same.periods if now < p.start < new.end}
        if now < same.end < new.end:
            moments.add(same.end)
    out = []
    for t in sorted(moments):
        a = new.limit_at(t)
        b = same.limit_at(t) if same is not None else None
        before = default_w if b is None else b
        if a is not None and a != before:
            out.append(move(before, a))
    return out


def differs(old: TxProfile | None, new: TxProfile, *, min_remaining: timedelta = timedelta(hours=1)) -> bool:
    """True when ``new`` would make the station do something else than ``old`` from now on.

    Compared at every boundary of either schedule from ``new``'s start until the earlier of
    the two ends; an ``old`` profile with less than ``min_remaining`` left counts as different
    (it is renewed before it runs out).
    """
    if old is None or old.transaction_id != new.transaction_id:
        return True
    start = new.periods[0].start
    if old.end - start < min_remaining:
        return True
    until = min(new.end, old.end)
    moments = {start} | {p.start for p in new.periods if start <= p.start < until}
    moments |= {p.start for p in old.periods if start <= p.start < until}
    for t in moments:
        a, b = old.limit_at(t), new.limit_at(t)
        if a is None or b is None or abs(a - b) > CHANGE_TOLERANCE_W:
            return True
        # A smaller limit is re-sent however small the step: the plan fills a binding site limit
        # exactly, so 50 EVSEs each left 90 W above their new plan would put the site 4.5 kW over
        # it. A larger one within the tolerance only leaves a little room unused. Import and
        # export are bounded apart: +40 W to -50 W lowers the import the EVSE may draw (to none)
        # though the size grew, and -40 W to +50 W lowers its export.
        if (max(b, 0.0) < max(a, 0.0) - LIMIT_RESOLUTION_W / 2
                or max(-b, 0.0) < max(-a, 0.0) - LIMIT_RESOLUTION_W / 2):
            return True
    return False
