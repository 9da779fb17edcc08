"""`gateway station add|list|disable` and `gateway token add|list`: operator chores from a shell."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.clock import RealClock
from gateway.config import Settings
from gateway.db.engine import make_engine, sessionmaker
from gateway.db.stations import KEEP, EvseRow, StationRepository, TokenRepository
from gateway.episode import StationSpec
from gateway.ocpp.auth import hash_password, verify_password
from gateway.ocpp.server import valid_station_id

MIN_PASSWORD_LENGTH = 16  # OCPP 2.0.1 A00.FR.205: BasicAuthPassword is 16 to 40 characters
# `station list` reads the stations a page at a time (the repository's default page is 1000, and
# the list used to stop there without a word).
STATION_LIST_PAGE = 1000


class PasswordHashes:
    """The hash to store for one password: a station's stored hash where the password is the
    one it was made from, else a new one (made once). A new hash of the same password would read
    as a new password, and a running gateway ends the session of a station whose password
    changed. Each stored hash is checked once (argon2 is slow on purpose)."""

    def __init__(self, password: str) -> None:
        self.password = password
        self._same: dict[str, bool] = {}
        self._new: str | None = None

    async def for_station(self, stored: str | None) -> tuple[str, bool]:
        """(the hash to store, whether it is a new one)."""
        if stored is not None and stored not in self._same:
            self._same[stored] = await asyncio.to_thread(verify_password, stored, self.password)
        if stored is not None and self._same[stored]:
            return stored, False
        if self._new is None:
            self._new = await asyncio.to_thread(hash_password, self.password)
        return self._new, True


async def register_stations(
    repo: StationRepository, stations: Sequence[StationSpec], password: str, now: datetime,
) -> None:
    """Register simulated (or surveyed) stations with one password and their EVSE limits; one
    registered before with this password keeps its stored hash (:class:`PasswordHashes`)."""
    stored = await repo.password_hashes([st.id for st in stations])
    hashes = PasswordHashes(password)
    for st in stations:
        use, _ = await hashes.for_station(stored.get(st.id))
        # A simulated station logs in with Basic auth over ws and takes negative limits: what an
        # earlier registration of the id set otherwise is replaced, as the rest of it is.
        await repo.add(st.id, use, security_profile=1, discharge_dialect="negative_limit",
                       discharge_undeclared_evs=None, now=now, evses=[
            EvseRow(e.evse_id, e.max_charge_kw, e.max_discharge_kw, e.bidirectional, e.phases) for e in st.evses])


async def register_for_sim(database_url: str, stations: Sequence[StationSpec], password: str) -> None:
    engine = make_engine(database_url, pool_size=2)
    try:
        await register_stations(StationRepository(sessionmaker(engine)), stations, password, RealClock().now())
    finally:
        await engine.dispose()


class EvseSpecError(ValueError):
    """An ``--evse`` the gateway refuses; the message names the flag and the value."""


# The parts of ``ID:CHARGE_KW[:DISCHARGE_KW]`` by the REST body's field names, for messages.
_EVSE_PARTS = {"evse_id": "ID", "max_charge_kw": "CHARGE_KW", "max_discharge_kw": "DISCHARGE_KW"}


def parse_evses(specs: Sequence[str] | None) -> list[tuple[int, float, float]]:
    """Every ``--evse ID:CHARGE_KW[:DISCHARGE_KW]`` (e.g. ``1:11:11`` for a bidirectional 11 kW
    EVSE) as ``(evse_id, charge_kw, discharge_kw)``, checked against the REST API's bounds (its
    ``EvseIn``: the id from 1, powers 0 to 2000 kW and finite) and for repeated ids.

    All of them are read before anything is written: a bad one after the station row had been
    committed left a station without its EVSEs (and a traceback)."""
    from pydantic import ValidationError

    # The REST body itself, so the two ways in cannot drift apart. Imported here: the API
    # module pulls in FastAPI, which only this command needs.
    from gateway.api.routes.stations import EvseIn

    out: list[tuple[int, float, float]] = []
    for text in specs or []:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise EvseSpecError(f"bad --evse {text!r}: takes ID:CHARGE_KW[:DISCHARGE_KW], e.g. 1:11:11")
        try:
            evse_id, charge = int(parts[0]), float(parts[1])
            discharge = float(parts[2]) if len(parts) == 3 else 0.0
        except ValueError:
            raise EvseSpecError(f"bad --evse {text!r}: ID is a whole number and the powers are kW, "
                                "e.g. 1:11:11") from None
        try:
            evse = EvseIn(evse_id=evse_id, max_charge_kw=charge, max_discharge_kw=discharge)
        except ValidationError as exc:
            err = exc.errors()[0]
            part = _EVSE_PARTS.get(str(err["loc"][0]), str(err["loc"][0])) if err["loc"] else "value"
            raise EvseSpecError(f"bad --evse {text!r}: {part}: {err['msg']}") from None
        if any(e[0] == evse.evse_id for e in out):
            raise EvseSpecError(f"bad --evse {text!r}: EVSE {evse.evse_id} is given more than once")
        out.append((evse.evse_id, evse.max_charge_kw, evse.max_discharge_kw))
    return out


def _run(settings: Settings, args: argparse.Namespace,
         command: Callable[[Settings, argparse.Namespace, async_sessionmaker[AsyncSession]], Awaitable[int]]) -> int:
    """One short-lived engine per command; a clear error without a database URL."""
    if not settings.database_url:
        print("error: no database URL (--database-url or GATEWAY_DATABASE_URL)", file=sys.stderr)
        return 2

    async def main() -> int:
        engine = make_engine(settings.database_url or "", pool_size=2)
        try:
            return await command(settings, args, sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def station_cli(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, args, _station)


async def _station(settings: Settings, args: argparse.Namespace, sessions: async_sessionmaker[AsyncSession]) -> int:
    repo = StationRepository(sessions)
    if args.station_command == "add":
        sid = valid_station_id(args.station_id, settings.max_station_id_length)
        if sid is None:
            print(f"error: invalid station id {args.station_id!r}", file=sys.stderr)
            return 2
        try:
            evses = parse_evses(args.evse)
        except EvseSpecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # Read first: what is not given is kept, a password given again keeps its hash, and the
        # message says what changed. Whether the row is new is the upsert's own answer.
        found = await repo.registration(sid)
        before, creds = found if found is not None else (None, None)
        profile = args.security_profile or (creds.security_profile if creds is not None else 1)
        hashed: str | None = None
        password_changed = creds is not None and creds.password_hash is not None
        if profile >= 3:
            # The certificate is the credential (its commonName is the station id); a password
            # would never be asked for.
            if args.password_stdin:
                print("error: a profile 3 station logs in with its certificate: no --password-stdin",
                      file=sys.stderr)
                return 2
        else:
            if not args.password_stdin:
                print("error: profiles 1 and 2 need a password (--password-stdin)", file=sys.stderr)
                return 2
            password = sys.stdin.readline().rstrip("\r\n")
            if len(password) < MIN_PASSWORD_LENGTH or len(password) > 40:
                print(f"error: the password must be {MIN_PASSWORD_LENGTH} to 40 characters", file=sys.stderr)
                return 2
            hashed, password_changed = await PasswordHashes(password).for_station(
                creds.password_hash if creds is not None else None)
        undeclared = {None: KEEP, "site": None, "yes": True, "no": False}[args.discharge_undeclared_evs]
        inserted = await repo.add(sid, hashed, security_profile=args.security_profile,
                                  discharge_dialect=args.discharge_dialect, discharge_undeclared_evs=undeclared,
                                  evses=[EvseRow(evse_id, charge, discharge, discharge > 0)
                                         for evse_id, charge, discharge in evses],
                                  now=RealClock().now())
        if inserted or before is None:
            print(f"station {sid} registered (security profile {profile})")
        else:
            print(_replaced(sid, args, password_changed, [e[0] for e in evses], re_enabled=not before.enabled))
    elif args.station_command == "list":
        offset = 0
        while True:
            # Pages by offset in id order: a station registered meanwhile may shift one into the
            # next page (listed twice) or out of it, as with any listing of a changing table.
            page = await repo.list(limit=STATION_LIST_PAGE, offset=offset)
            if offset == 0:  # after the first read: no header above a database error
                print(f"{'id':<24} {'profile':>7} {'enabled':>7} {'online (node)':<16} {'vendor/model':<30} last seen")
            for s in page:
                vm = f"{s.vendor or '-'}/{s.model or '-'}"
                seen = s.last_seen_at.isoformat() if s.last_seen_at else "-"
                # The gateway node holding its connection (several may share the database).
                online = (s.connected_node or "yes") if s.connected else "no"
                print(f"{s.id:<24} {s.security_profile:>7} {s.enabled!s:>7} {online:<16} {vm:<30} {seen}")
            if len(page) < STATION_LIST_PAGE:
                break
            offset += len(page)
    elif args.station_command == "disable":
        if not await repo.set_enabled(args.station_id, False):
            print(f"error: no station {args.station_id!r}", file=sys.stderr)
            return 1
        # The running gateways hear the change (gateway/db/station_changes.py): the one holding
        # the station's connection closes it.
        print(f"station {args.station_id} disabled: its logins are refused and a running gateway closes "
              f"its live connection")
    return 0


def _replaced(sid: str, args: argparse.Namespace, password_changed: bool, evse_ids: Sequence[int], *,
              re_enabled: bool) -> str:
    """What re-running ``station add`` on a registered id did: the documented way to change a
    password, the security profile, the discharge settings or ratings; what the command does not
    give is kept (and a disabled station is enabled again)."""
    parts = []
    if password_changed:
        parts.append("password" if args.password_stdin else "password (removed: the certificate is the credential)")
    if args.security_profile is not None:
        parts.append(f"security profile ({args.security_profile})")
    if args.discharge_dialect is not None:
        parts.append(f"discharge dialect ({args.discharge_dialect})")
    if args.discharge_undeclared_evs is not None:
        parts.append(f"discharge of undeclared EVs ({args.discharge_undeclared_evs})")
    if evse_ids:  # EVSEs not given keep their ratings
        parts.append("ratings of EVSE " + ", ".join(str(i) for i in evse_ids))
    if not parts:
        line = f"station {sid} unchanged"
    elif len(parts) == 1:
        line = f"station {sid} updated: {parts[0]} replaced"
    else:
        line = f"station {sid} updated: {', '.join(parts[:-1])} and {parts[-1]} replaced"
    if not password_changed and args.password_stdin:
        line += " (the password given is the one registered: kept)"
    return line + ("; enabled (it was disabled)" if re_enabled else "")


class IdTokenError(ValueError):
    """An idToken or type ``token add`` refuses; the message names the problem and the value."""


def check_id_token(id_token: str, type_: str) -> None:
    """Refuse what OCPP 2.0.1's IdTokenType does not allow, before anything is written: an
    empty, over-long (the column is 36 characters: Postgres' truncation error came out as a
    traceback) or non-printable idToken, and a type not in IdTokenEnumType.

    The idToken is checked with the REST API's own rule (``DriverTokenIn``, the idToken a driver
    token is bound to), so the two ways an idToken is entered agree; the type with the OCPP
    library's enum, the one the gateway's own messages are built with."""
    from ocpp.v201.enums import IdTokenEnumType
    from pydantic import ValidationError

    # Imported here, as in parse_evses: the API module pulls in FastAPI, only this command needs it.
    from gateway.api.routes.driver_tokens import DriverTokenIn

    try:
        DriverTokenIn(id_token=id_token)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx = err.get("ctx", {})
        problem = {
            "string_too_short": "it is empty",
            "string_too_long": f"{len(id_token)} characters, at most {ctx.get('max_length')}",
            "string_pattern_mismatch": "it has a non-printable character",
        }.get(err["type"], str(err["msg"]))
        raise IdTokenError(f"invalid idToken {id_token!r}: {problem}") from None
    # The REST pattern refuses ASCII control characters only; an argument pasted into a shell
    # can also carry invisible ones (a zero-width or non-breaking space, a C1 control) that no
    # reader sends, so the token would never match.
    if not id_token.isprintable():
        raise IdTokenError(f"invalid idToken {id_token!r}: it has a non-printable character")
    types = [t.value for t in IdTokenEnumType]
    if type_ not in types:
        raise IdTokenError(f"unknown idToken type {type_!r}: one of {', '.join(types)}")


def token_cli(settings: Settings, args: argparse.Namespace) -> int:
    if args.token_command == "add":
        # Before the engine is made: a refused token never reaches the database.
        try:
            check_id_token(args.id_token, args.type)
        except IdTokenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return _run(settings, args, _token)


async def _token(settings: Settings, args: argparse.Namespace, sessions: async_sessionmaker[AsyncSession]) -> int:
    repo = TokenRepository(sessions)
    if args.token_command == "add":
        await repo.add(args.id_token, args.type, RealClock().now())
        print(f"idToken {args.id_token} accepted")
    else:
        for t in await repo.list():
            print(f"{t.id_token:<36} {t.type:<14} {t.status}")
    return 0
