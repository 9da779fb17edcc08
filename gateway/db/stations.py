"""Stations, their EVSEs and connectors, idTokens, security events and kept notifications."""

from __future__ import annotations

import builtins
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Boolean, case, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import metrics
from gateway.db import models as m
from gateway.db.station_changes import announce
from gateway.ocpp.ports import StationCredentials


class Keep(enum.Enum):
    """A setting :meth:`StationRepository.add` leaves as it is on a registered station."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StationRow:
    id: str
    security_profile: int
    enabled: bool
    discharge_dialect: str
    vendor: str | None
    model: str | None
    firmware_version: str | None
    boot_status: str
    last_seen_at: datetime | None
    connected: bool
    discharge_undeclared_evs: bool | None = None  # None: the site's setting
    default_limit_kw: float | None = None  # the TxDefaultProfile limit it last accepted
    connected_node: str | None = None  # the gateway node holding its connection, per the flag
    default_answer: str | None = None  # its last definite answer to a TxDefaultProfile


@dataclass(frozen=True, slots=True)
class EvseRow:
    evse_id: int
    max_charge_kw: float
    max_discharge_kw: float
    bidirectional: bool
    phases: int | None = None  # None: the column's default for a new EVSE, kept for one known


async def _put_evses(s: AsyncSession, station_id: str, evses: Sequence[EvseRow]) -> None:
    """Write ``evses`` of ``station_id`` in the session's transaction, replacing the ratings of
    any stored (a phase count left out keeps the stored one, or the column's default)."""
    for e in evses:
        ratings: dict[str, Any] = {"max_charge_kw": e.max_charge_kw, "max_discharge_kw": e.max_discharge_kw,
                                   "bidirectional": e.bidirectional}
        if e.phases is not None:
            ratings["phases"] = e.phases
        await s.execute(insert(m.Evse).values(station_id=station_id, evse_id=e.evse_id, **ratings)
                        .on_conflict_do_update(index_elements=[m.Evse.station_id, m.Evse.evse_id], set_=ratings))


def _row(s: m.Station) -> StationRow:
    return StationRow(s.id, s.security_profile, s.enabled, s.discharge_dialect, s.vendor, s.model,
                      s.firmware_version, s.boot_status, s.last_seen_at, s.connected, s.discharge_undeclared_evs,
                      s.default_limit_kw, s.connected_node, s.default_answer)


def _credentials(s: m.Station) -> StationCredentials:
    return StationCredentials(s.id, s.password_hash, s.security_profile, s.enabled)


class StationRepository:
    """Implements :class:`gateway.ocpp.ports.StationDirectory` and the station bookkeeping."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def credentials(self, station_id: str) -> StationCredentials | None:
        async with self._sessions() as s:
            st = await s.get(m.Station, station_id)
            if st is None:
                return None
            return _credentials(st)

    async def add(
        self, station_id: str, password_hash: str | None, *, security_profile: int | None = None,
        discharge_dialect: str | None = None, discharge_undeclared_evs: bool | Keep | None = KEEP,
        evses: Sequence[EvseRow] = (), now: datetime,
    ) -> bool:
        """Register a station, or replace its password if it exists (the CLI's ``station add``;
        the REST API registers with :meth:`create`, which never replaces), with ``evses`` (their
        ratings replaced too), in one commit: a failure part-way leaves nothing. The security
        profile and discharge settings are replaced where given and kept where not (a new station
        gets profile 1, the ``negative_limit`` dialect and the site's default for undeclared EVs),
        so re-running the command to change one thing does not quietly reset the others.
        ``True`` when the station is new, ``False`` when an existing one was replaced."""
        given: dict[str, Any] = {"password_hash": password_hash, "enabled": True}
        if security_profile is not None:
            given["security_profile"] = security_profile
        if discharge_dialect is not None:
            given["discharge_dialect"] = discharge_dialect
        if discharge_undeclared_evs is not KEEP:
            given["discharge_undeclared_evs"] = discharge_undeclared_evs
        async with self._sessions.begin() as s:
            stmt = insert(m.Station).values(
                id=station_id, password_hash=password_hash, security_profile=security_profile or 1,
                discharge_dialect=discharge_dialect or "negative_limit",
                discharge_undeclared_evs=None if discharge_undeclared_evs is KEEP else discharge_undeclared_evs,
                enabled=True, registered_at=now,
            )
            # The statement itself tells, not a look-up before it (a concurrent add could come
            # between): a row the upsert inserted has no deleting transaction yet (xmax 0), a row
            # it updated has this one.
            inserted = (await s.execute(stmt.on_conflict_do_update(
                index_elements=[m.Station.id], set_=given,
            ).returning(literal_column("xmax = 0", Boolean)))).scalar_one()
            await _put_evses(s, station_id, evses)
            await announce(s, station_id)
            return bool(inserted)

    async def password_hashes(self, station_ids: Sequence[str]) -> dict[str, str | None]:
        """The stored password hash of each of ``station_ids`` that is registered."""
        async with self._sessions() as s:
            res = await s.execute(select(m.Station.id, m.Station.password_hash)
                                  .where(m.Station.id.in_(list(station_ids))))
            return {sid: h for sid, h in res.tuples()}

    async def create(
        self, station_id: str, password_hash: str, *, security_profile: int, discharge_dialect: str,
        discharge_undeclared_evs: bool | None = None, evses: Sequence[EvseRow] = (), now: datetime,
    ) -> bool:
        """Register a new station with its EVSEs, in one commit; ``False`` (nothing written) if the
        id is taken. The insert itself decides, not an earlier look-up: of two concurrent
        registrations of one id exactly one is stored, and the other's password never is."""
        async with self._sessions.begin() as s:
            created = (await s.execute(insert(m.Station).values(
                id=station_id, password_hash=password_hash, security_profile=security_profile,
                discharge_dialect=discharge_dialect, discharge_undeclared_evs=discharge_undeclared_evs,
                enabled=True, registered_at=now,
            ).on_conflict_do_nothing(index_elements=[m.Station.id]).returning(m.Station.id))).scalar_one_or_none()
            if created is None:
                return False
            await _put_evses(s, station_id, evses)
            await announce(s, station_id)
            return True

    async def set_enabled(self, station_id: str, enabled: bool) -> bool:
        async with self._sessions.begin() as s:
            res = await s.execute(update(m.Station).where(m.Station.id == station_id)
                                  .values(enabled=enabled))
            if not res.rowcount:  # type: ignore[attr-defined]
                return False
            await announce(s, station_id)  # the node holding its connection acts on it
            return True

    async def registration(self, station_id: str) -> tuple[StationRow, StationCredentials] | None:
        """The station's row and the credentials a login is checked against, in one read."""
        async with self._sessions() as s:
            st = await s.get(m.Station, station_id)
            if st is None:
                return None
            return _row(st), _credentials(st)

    async def get(self, station_id: str) -> StationRow | None:
        async with self._sessions() as s:
            st = await s.get(m.Station, station_id)
            return _row(st) if st else None

    async def list(self, *, limit: int = 1000, offset: int = 0) -> builtins.list[StationRow]:
        async with self._sessions() as s:
            res = await s.execute(select(m.Station).order_by(m.Station.id).limit(limit).offset(offset))
            return [_row(st) for st in res.scalars()]

    async def boot(self, station_id: str, payload: dict[str, Any], now: datetime) -> str:
        """Store a BootNotification; returns the station's boot status (Accepted/Pending/Rejected)."""
        cs = payload.get("chargingStation", {})
        async with self._sessions.begin() as s:
            await s.execute(insert(m.Station).values(id=station_id, registered_at=now)
                            .on_conflict_do_nothing(index_elements=[m.Station.id]))
            st = await s.get(m.Station, station_id, with_for_update=True)
            assert st is not None
            st.vendor = cs.get("vendorName")
            st.model = cs.get("model")
            st.serial_number = cs.get("serialNumber")
            st.firmware_version = cs.get("firmwareVersion")
            st.boot_reason = payload.get("reason")
            st.last_boot_at = now
            st.last_seen_at = now
            return st.boot_status

    async def set_connected(self, station_id: str, connected: bool, now: datetime, node: str,
                            since: datetime | None = None) -> None:
        """One statement: creates the row of a station admitted unregistered (dev mode) too. A
        connection is written with the ``node`` holding it and ``since`` when it was opened (wall
        clock); a disconnect only by that node, for that connection (or over a flag no node
        holds). So the write of an older connection, landing late, never replaces a newer one's,
        and a node that notices an old connection close after the station came back through
        another one leaves that one's flag alone. Nodes' clocks are taken to agree (NTP) to well
        under the time a station takes to reconnect."""
        async with self._sessions.begin() as s:
            held: dict[str, Any] = {"connected": connected, "connected_node": node if connected else None,
                                    "last_seen_at": now}
            if connected and since is not None:
                held["connected_since"] = since
            stmt = insert(m.Station).values(id=station_id, registered_at=now, **held)
            row_since = m.Station.connected_since
            if connected:
                newer = None if since is None else (row_since.is_(None) | (row_since <= since))
            else:
                this = m.Station.connected_node == node
                if since is not None:
                    this = this & (row_since.is_(None) | (row_since == since))
                newer = m.Station.connected_node.is_(None) | this
            await s.execute(stmt.on_conflict_do_update(index_elements=[m.Station.id], set_=held, where=newer))

    async def release_node(self, node: str) -> builtins.list[str]:
        """Mark disconnected the stations ``node`` held (at its start: none is connected through
        it yet, whatever a crash left in the table), and those a gateway from before the flag
        named its node left set; their ids."""
        async with self._sessions.begin() as s:
            held = (m.Station.connected_node == node) | m.Station.connected_node.is_(None)
            res = await s.execute(update(m.Station).where(m.Station.connected, held)
                                  .values(connected=False, connected_node=None).returning(m.Station.id))
            return sorted(res.scalars())

    async def set_default_answer(self, station_id: str, answer: str, limit_kw: float | None) -> None:
        """The station's answer to a TxDefaultProfile, with the limit when it took it (a refusal
        leaves in force the one it took before)."""
        values: dict[str, Any] = {"default_answer": answer}
        if limit_kw is not None:
            values["default_limit_kw"] = limit_kw
        async with self._sessions.begin() as s:
            await s.execute(update(m.Station).where(m.Station.id == station_id).values(**values))

    async def touch(self, station_id: str, now: datetime) -> None:
        async with self._sessions.begin() as s:
            await s.execute(update(m.Station).where(m.Station.id == station_id).values(last_seen_at=now))

    async def set_connector_status(
        self, station_id: str, evse_id: int, connector_id: int, status: str, ts: datetime
    ) -> None:
        async with self._sessions.begin() as s:
            await s.execute(insert(m.Evse).values(station_id=station_id, evse_id=evse_id)
                            .on_conflict_do_nothing())
            stmt = insert(m.Connector).values(station_id=station_id, evse_id=evse_id,
                                              connector_id=connector_id, status=status, status_at=ts)
            await s.execute(stmt.on_conflict_do_update(
                index_elements=[m.Connector.station_id, m.Connector.evse_id, m.Connector.connector_id],
                set_={"status": status, "status_at": ts},
                where=m.Connector.status_at <= ts,  # a late (offline) report never overwrites a newer one
            ))

    async def evses(self, station_ids: Sequence[str] | None = None) -> builtins.list[m.Evse]:
        async with self._sessions() as s:
            q = select(m.Evse)
            if station_ids is not None:
                q = q.where(m.Evse.station_id.in_(station_ids))
            return list((await s.execute(q)).scalars())

    async def connectors(self, station_id: str) -> builtins.list[m.Connector]:
        async with self._sessions() as s:
            q = select(m.Connector).where(m.Connector.station_id == station_id)
            return list((await s.execute(q)).scalars())

    async def keep_message(self, station_id: str, action: str, payload: dict[str, Any], now: datetime) -> None:
        async with self._sessions.begin() as s:
            s.add(m.StationMessage(station_id=station_id, action=action, payload=payload, received_at=now))

    async def set_firmware_status(self, station_id: str, status: str) -> None:
        async with self._sessions.begin() as s:
            await s.execute(update(m.Station).where(m.Station.id == station_id)
                            .values(firmware_status=status))


class SecurityEventRepository:
    """Implements :class:`gateway.ocpp.ports.SecurityEventSink`: failures are logged, never raised."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock_now: Any) -> None:
        self._sessions = sessions
        self._now = clock_now

    async def security_event(
        self, station_id: str | None, kind: str, detail: str, remote_address: str | None,
        source: str = "gateway", ts: datetime | None = None,
    ) -> None:
        metrics.SECURITY_EVENTS.labels(kind).inc()
        log.warning("security event %s station=%s remote=%s: %s", kind, station_id, remote_address, detail)
        try:
            async with self._sessions.begin() as s:
                s.add(m.SecurityEventRecord(
                    station_id=station_id, kind=kind[:50], detail=detail, remote_address=remote_address,
                    source=source, ts=ts or self._now(),
                ))
        except Exception:
            log.exception("could not store security event %s", kind)


class TokenRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add(self, id_token: str, type_: str, now: datetime, status: str = "Accepted") -> None:
        async with self._sessions.begin() as s:
            stmt = insert(m.IdTokenRecord).values(id_token=id_token, type=type_, status=status,
                                                  created_at=now)
            await s.execute(stmt.on_conflict_do_update(index_elements=[m.IdTokenRecord.id_token],
                                                       set_={"type": type_, "status": status}))

    async def status(self, id_token: str) -> str | None:
        """The status of ``id_token`` whatever its case (OCPP 2.0.1: an idToken is
        case-insensitive; readers write a UID's hex in either case). A token stored in two cases
        answers with the one written as asked."""
        async with self._sessions() as s:
            q = (select(m.IdTokenRecord.status)
                 .where(func.lower(m.IdTokenRecord.id_token) == func.lower(id_token))
                 .order_by(case((m.IdTokenRecord.id_token == id_token, 0), else_=1)).limit(1))
            status: str | None = (await s.execute(q)).scalar_one_or_none()
            return status

    async def list(self) -> builtins.list[m.IdTokenRecord]:
        async with self._sessions() as s:
            return list((await s.execute(select(m.IdTokenRecord).order_by(m.IdTokenRecord.id_token))).scalars())
