"""The one place for commands: ``gateway serve | db | station | token | sim | scenario | evaluate | demo``.

Flags override ``GATEWAY_*`` environment variables; each subcommand hands a typed
:class:`~gateway.config.Settings` (or its parsed arguments) to the module that does the work.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import ssl
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.config import Settings, SiteFileError, env_setting

# `gateway --help` prints this as it is: the module's docstring is for readers of the code.
DESCRIPTION = (
    "OCPP 2.0.1 charge-point gateway: run the central system (serve), migrate its database (db), "
    "register stations and idTokens (station, token), simulate stations against it (sim), generate "
    "and evaluate simulated days offline (scenario, evaluate), or watch all of it on one "
    "accelerated day (demo). A flag overrides the GATEWAY_* environment variable of the same setting "
    "(GATEWAY_DATABASE_URL for the database URL). Run gateway COMMAND --help for a command's options."
)


class UsageError(Exception):
    """A flag or ``GATEWAY_*`` variable the gateway refuses: reported as argparse reports a bad
    flag (``gateway: error: ...``, exit status 2), one line per problem, without a traceback."""


class OperatorError(Exception):
    """The settings are fine but the world is not ready (the database not migrated, a port in
    use): one line, exit status 1."""


# Never echoed back in an error: they may carry a password or the operator key.
_SECRET_SETTINGS = frozenset({"database_url", "mqtt_url", "api_key"})
# The flags whose setting has another name.
_FLAG_OF = {"scheduler_enabled": "--no-scheduler"}


def _name(field: str, given: dict[str, Any]) -> str:
    """The setting as the operator gave it: its variable when that is where it came from, else
    its flag (given, or the default it has when neither is)."""
    if field not in given and env_setting(field.upper()) is not None:
        return f"GATEWAY_{field.upper()}"
    return _FLAG_OF.get(field, "--" + field.replace("_", "-"))


def _problem(err: Any, given: dict[str, Any]) -> str:
    """One pydantic error as a line naming the flag or environment variable."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = err["loc"]
    if not loc:  # a check across settings: its message names them (config._tls_complete)
        return msg
    field = str(loc[0])
    name = _name(field, given) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    value = err.get("input")
    shown = (f" (got {value!r})" if field not in _SECRET_SETTINGS and isinstance(value, str | int | float)
             and repr(value) not in msg else "")
    return f"{name}: {msg}{shown}"


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave as flags (they override the environment)."""
    names = (
        "database_url", "mqtt_url", "api_key", "ocpp_host", "ocpp_port", "api_host", "api_port",
        "tls_cert", "tls_key", "tls_client_ca", "config", "time_scale", "call_timeout_s", "heartbeat_interval_s",
        "log_level", "node_id",
    )
    overrides: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    for flag in ("migrate", "allow_unknown_stations", "known_tokens_only", "log_json"):
        if getattr(args, flag, False):
            overrides[flag] = True
    if getattr(args, "no_scheduler", False):
        overrides["scheduler_enabled"] = False
    if getattr(args, "sim_start", None):
        overrides["sim_start"] = args.sim_start  # RFC 3339, parsed (and refused) by Settings
    return overrides


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from env, overridden by every flag the user actually gave; :class:`UsageError`
    naming each flag or variable that is refused."""
    overrides = _overrides(args)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise UsageError("\n".join(_problem(err, overrides) for err in exc.errors())) from None
    except SettingsError as exc:  # a GATEWAY_* variable holding JSON that does not parse
        raise UsageError(str(exc)) from None
    return settings.with_site_file()


def _add_common(p: argparse.ArgumentParser, *, site_file: bool = True) -> None:
    p.add_argument("--database-url", help="postgresql+asyncpg://... (env GATEWAY_DATABASE_URL)")
    # A command without a site file still takes the flag, unlisted, so that its own refusal
    # (which says where the file belongs) answers rather than argparse's "unrecognized arguments".
    p.add_argument("--config", help="TOML site file (limits, tariff)" if site_file else argparse.SUPPRESS)
    p.add_argument("--log-level")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")


def _add_time(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-scale", type=float, help="simulated seconds per real second (default 1)")
    p.add_argument("--sim-start", help="simulated start time, RFC 3339 (default: now)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the central system until SIGTERM/SIGINT")
    _add_common(serve)
    _add_time(serve)
    serve.add_argument("--ocpp-host")
    serve.add_argument("--ocpp-port", type=int)
    serve.add_argument("--api-host")
    serve.add_argument("--api-port", type=int)
    serve.add_argument("--mqtt-url", help="mqtt://host:port (env GATEWAY_MQTT_URL); MQTT is off when unset")
    serve.add_argument("--api-key", help="operator API key (env GATEWAY_API_KEY)")
    serve.add_argument("--node-id", help="this gateway among those sharing the database (env GATEWAY_NODE_ID; "
                                         "default: the host name)")
    serve.add_argument("--tls-cert", help="server certificate (PEM) for security profile 2")
    serve.add_argument("--tls-key", help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", help="CA bundle (PEM) of station certificates, for security profile 3")
    serve.add_argument("--migrate", action="store_true", help="apply database migrations first")
    serve.add_argument("--allow-unknown-stations", action="store_true",
                       help="DEV ONLY: admit stations that are not registered")
    serve.add_argument("--known-tokens-only", action="store_true",
                       help="accept only idTokens registered with `gateway token add`")
    serve.add_argument("--call-timeout-s", type=float)
    serve.add_argument("--heartbeat-interval-s", type=int)
    serve.add_argument("--no-scheduler", action="store_true", help="run without the MPC scheduler")

    db = sub.add_parser("db", help="database migrations")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply all migrations")
    up.add_argument("revision", nargs="?", default="head")
    down = dbsub.add_parser("downgrade", help="revert to a revision")
    down.add_argument("revision")
    cur = dbsub.add_parser("current", help="show the applied revision")
    for leaf in (up, down, cur):
        _add_common(leaf)

    station = sub.add_parser("station", help="register and list stations")
    ssub = station.add_subparsers(dest="station_command", required=True)
    add = ssub.add_parser("add", help="register a station (password read from stdin), or change one: "
                                      "what is not given is kept")
    add.add_argument("station_id")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the Basic-auth password from stdin (profiles 1 and 2: required)")
    # On a registered station, a setting not given is kept as it is.
    add.add_argument("--security-profile", type=int, choices=(1, 2, 3), default=None,
                     help="1: Basic over ws; 2: Basic over wss; 3: TLS client certificate (no password); "
                          "a new station: 1")
    add.add_argument("--discharge-dialect", choices=("none", "negative_limit"), default=None,
                     help="how the station takes a discharge command (negative W limit on 2.0.1); "
                          "a new station: negative_limit")
    add.add_argument("--discharge-undeclared-evs", choices=("yes", "no", "site"), default=None,
                     help="discharge EVs that did not declare a discharge power (CHAdeMO V2G cars "
                          "behind a DC charger); site (a new station's): the site's "
                          "GATEWAY_DISCHARGE_UNDECLARED_EVS")
    add.add_argument("--evse", action="append", metavar="ID:CHARGE_KW[:DISCHARGE_KW]",
                     help="an EVSE and its power limits (repeatable), e.g. 1:11:11")
    slist = ssub.add_parser("list", help="list registered stations")
    dis = ssub.add_parser("disable", help="disable a station")
    dis.add_argument("station_id")
    for leaf in (add, slist, dis):
        _add_common(leaf)

    token = sub.add_parser("token", help="idTokens accepted under --known-tokens-only")
    tsub = token.add_subparsers(dest="token_command", required=True)
    tadd = tsub.add_parser("add", help="accept an idToken (or change the type of one accepted)")
    tadd.add_argument("id_token", help="up to 36 printable characters, e.g. an RFID card's UID in hex")
    # Checked by `token add` itself (gateway.db.admin.check_id_token) against the OCPP library's
    # enum rather than listed here as choices: importing that library would slow every command.
    tadd.add_argument("--type", default="ISO14443",
                      help="the OCPP 2.0.1 IdTokenEnumType: Central, eMAID, ISO14443 (default), ISO15693, "
                           "KeyCode, Local, MacAddress or NoAuthorization")
    tlist = tsub.add_parser("list")
    for leaf in (tadd, tlist):
        _add_common(leaf)

    sim = sub.add_parser("sim", help="run a simulated fleet of stations against a gateway")
    _add_time(sim)
    sim.add_argument("--url", default="ws://127.0.0.1:9000/ocpp")
    src = sim.add_mutually_exclusive_group(required=True)
    src.add_argument("--episode", help="episode JSON file")
    src.add_argument("--stations", type=_positive_int, help="N generic stations (workplace episode)")
    sim.add_argument("--password", help="Basic-auth password for every station")
    sim.add_argument("--json", help="write the end-of-run summary to this file")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--no-progress", action="store_true")
    sim.add_argument("--until", help="stop at this simulated time, RFC 3339 (default: the episode's end)")
    sim.add_argument("--register", action="store_true",
                     help="first register the episode's stations (with --password) in the gateway's database")
    sim.add_argument("--database-url", help="the gateway's database for --register (env GATEWAY_DATABASE_URL)")
    sim.add_argument("--api-url", help="the gateway's REST API (e.g. http://127.0.0.1:8000): send it the "
                                       "episode's site limits, tariff, grid events and building load")
    sim.add_argument("--api-key", help="the operator key for --api-url (env GATEWAY_API_KEY)")

    scen = sub.add_parser("scenario", help="generate episodes")
    scsub = scen.add_subparsers(dest="scenario_command", required=True)
    gen = scsub.add_parser("generate", help="write an episode JSON file")
    gen.add_argument("--site", choices=("workplace", "depot", "public", "residential"), default="workplace")
    gen.add_argument("--stations", type=_positive_int, default=50)
    gen.add_argument("--days", type=_positive_int, default=1)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--start", help="first day, RFC 3339 (default 2026-07-01T00:00:00Z)")
    gen.add_argument("--bidirectional-share", type=float, default=0.5)
    gen.add_argument("--iso15118-share", type=float, default=0.6)
    gen.add_argument("--departure-noise-h", type=float, default=1.0)
    gen.add_argument("--surprise-share", type=float, default=0.05)
    gen.add_argument("--need-change-share", type=float, default=0.05)
    gen.add_argument("--grid-event", choices=("auto", "always", "never"), default="auto")
    gen.add_argument("--building-weekend-factor", type=float, default=1.0,
                     help="the building's weekend load against a weekday's (default 1.0: every day alike)")
    gen.add_argument("--out", "-o", required=True)

    ev = sub.add_parser("evaluate", help="compare charging policies on episodes offline")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--episode", action="append", help="episode JSON file (repeatable)")
    src.add_argument("--site", choices=("workplace", "depot", "public", "residential"))
    ev.add_argument("--stations", type=_positive_int, default=50)
    ev.add_argument("--days", type=_positive_int, default=1)
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--policies", default="uncontrolled,greedy,edf,mpc,optimal")
    ev.add_argument("--exact", action="store_true",
                    help="give every policy exact departures and needs, and every EV's battery (SoC, capacity, "
                         "reserve, own power limit and taper) as an ISO 15118 EV tells it")
    ev.add_argument("--building-forecast", choices=("learned", "ems"), default="learned",
                    help="what the MPC plans the building with: the profile it learns from the readings "
                         "(default), or the episode's energy-system day-ahead forecast, as if pushed over MQTT")
    ev.add_argument("--json", help="write results to this file")
    ev.add_argument("--report", help="write an HTML report to this file")
    ev.add_argument("--no-progress", action="store_true")

    demo = sub.add_parser("demo", help="gateway + simulated workplace through one accelerated day")
    _add_common(demo, site_file=False)
    demo.add_argument("--stations", type=_positive_int, default=50)
    demo.add_argument("--time-scale", type=float, default=600.0)
    demo.add_argument("--seed", type=int, default=None,
                      help="the day to simulate (default: a day chosen for the demo, whose export "
                           "request finds V2G cars parked)")
    demo.add_argument("--api-port", type=int, default=8000)
    demo.add_argument("--ocpp-port", type=int, default=9000)
    demo.add_argument("--mqtt-url")
    demo.add_argument("--report", default="demo-report.html")
    demo.add_argument("--json", default="demo-summary.json")
    return parser


def _positive_int(text: str) -> int:
    """A count of days or stations: 0 or less ran nothing, or failed deep inside with a traceback."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {v}")
    return v


def _check_writable(flag: str, path: str | None) -> None:
    """Refuse an output file that cannot be written before a run that may take hours, whose
    results were lost at its end. Checked without creating it, so a refused run leaves nothing."""
    if path is None:
        return
    p = Path(path)
    parent = p.parent.resolve()
    if p.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) \
            or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{flag}: cannot write {path!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Only what the operator can fix is reported as one line; anything else is a bug and keeps
    # its traceback.
    try:
        return _run(args)
    except UsageError as exc:
        for line in str(exc).splitlines():
            print(f"gateway: error: {line}", file=sys.stderr)
        return 2
    except SiteFileError as exc:
        # A typo in the site file is the operator's to fix: say where, not how Python got there.
        print(f"gateway: bad site file:\n{exc}", file=sys.stderr)
        return 2
    except OperatorError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        problem = _database_problem(exc, args)
        if problem is None:
            # Not for `db`: a missing table while migrating is a migration's bug, not advice to
            # migrate. Nor when it just migrated (serve --migrate): the advice would be what failed.
            missing = _missing_table(exc) if args.command != "db" and not getattr(args, "migrate", False) else None
            if missing is None:
                raise
            problem = f"the database is not migrated ({missing}): run `gateway db upgrade` (or serve --migrate)"
        print(f"gateway: error: {problem}", file=sys.stderr)
        return 1


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or while handling (SQLAlchemy wraps asyncpg's errors)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        yield cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__


def _missing_table(exc: BaseException) -> str | None:
    """Postgres's words when ``exc`` is (or was caused by) a table or column that does not
    exist: a database the gateway's migrations never ran on, or not since the gateway was
    upgraded (a new column)."""
    from asyncpg.exceptions import UndefinedColumnError, UndefinedTableError

    return next((str(cur) for cur in _causes(exc) if isinstance(cur, UndefinedTableError | UndefinedColumnError)),
                None)


def _database_url(args: argparse.Namespace) -> tuple[str | None, str]:
    """The database URL the command was given, and the setting the operator gave it as (every
    command that opens the database reads the flag, else the variable, as :class:`Settings` does)."""
    flag = getattr(args, "database_url", None)
    if flag:
        return flag, "--database-url"
    env = env_setting("DATABASE_URL")
    return env or None, ("GATEWAY_DATABASE_URL" if env else "--database-url")


def _database_place(url: str | None) -> tuple[str, str] | None:
    """``host:port`` and the database name of ``url``, as libpq's defaults fill them in; never
    the URL itself, which may hold a password."""
    if not url:
        return None
    from sqlalchemy.engine import make_url

    from gateway.db.engine import normalize_url

    try:
        u = make_url(normalize_url(url))
    except Exception:  # sim --register's URL is not checked by Settings: no place rather than a traceback
        return None
    host = u.host or str(u.query.get("host") or "localhost")
    # A password holding an unescaped "@" is split at its first one: the rest of it would be
    # shown as part of the host ("postgres:S3cret@PW@db" named the host "PW@db").
    host = host.rpartition("@")[2]
    port = u.port or 5432
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), u.database or u.username or ""


def _while_connecting(exc: BaseException) -> bool:
    """``exc`` came out of asyncpg opening a connection: an OSError or a time-out there is the
    database being unreachable, where the same error elsewhere (the simulator's WebSocket, a file)
    is not about the database at all."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "asyncpg.connect_utils" or (module == "asyncpg.connection" and code.co_name == "connect"):
            return True
        tb = tb.tb_next
    return False


def _unreachable_reason(exc: BaseException) -> str:
    """Why a connection could not be opened, in words (asyncio's own text names the address)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"host not found: {exc.strerror}" if exc.strerror else "host not found"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _database_problem(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line when the database the command was given cannot be used (nothing listening, no
    such database, the login refused, the server not taking connections), naming it by host, port
    and name; ``None`` for anything else, which is a bug and keeps its traceback."""
    from asyncpg import exceptions as pg

    url, setting = _database_url(args)
    place = _database_place(url)
    hostport, name = place if place is not None else ("", "")
    at, on = (f" at {hostport}", f" on {hostport}") if hostport else ("", "")
    database = f'the database "{name}"' if name else "the database"
    # The demo's embedded Postgres has no URL the operator could correct.
    check = f": check {setting}" if url else ""
    for cur in _causes(exc):
        if isinstance(cur, pg.InvalidCatalogNameError):
            return f"{cur}{on}{check}"
        if isinstance(cur, pg.InvalidAuthorizationSpecificationError):  # the role, its password, pg_hba.conf
            return f"{database}{at} refused the login ({cur}){check}"
        if isinstance(cur, pg.CannotConnectNowError | pg.TooManyConnectionsError):
            return f"{database}{at} is not taking connections ({cur}): try again later"
        if isinstance(cur, pg.PostgresConnectionError | pg.AdminShutdownError | pg.CrashShutdownError):
            return f"lost the connection to {database}{at} ({cur})"
        if isinstance(cur, OSError | TimeoutError) and _while_connecting(cur):
            return f"cannot reach {database}{at} ({_unreachable_reason(cur)}){check}"
    return None


def _check_tls(settings: Settings, given: dict[str, Any]) -> None:
    """Every TLS file given can be read and loaded, before anything starts. (Settings already
    refused half a set-up; a path that is wrong would otherwise fail inside the OCPP server with
    a traceback that names no setting.)"""
    for field in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(settings, field)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"{_name(field, given)}: cannot read {str(path)!r}: {exc.strerror}") from None
    if settings.tls_cert is None or settings.tls_key is None:
        return
    # Loaded as the server will load them (gateway/ocpp/server.py build_ssl_context), one at a
    # time so the error names the setting at fault.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    except ssl.SSLError as exc:
        raise UsageError(f"{_name('tls_cert', given)} / {_name('tls_key', given)}: not a PEM certificate "
                         f"and its private key ({exc.reason or exc})") from None
    if settings.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(settings.tls_client_ca))
        except ssl.SSLError as exc:
            raise UsageError(f"{_name('tls_client_ca', given)}: not a PEM CA bundle "
                             f"({exc.reason or exc})") from None


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    given = _overrides(args)
    if not settings.database_url:
        raise UsageError("no database URL (--database-url or GATEWAY_DATABASE_URL)")
    _check_tls(settings, given)
    from gateway.app import serve

    try:
        # A port in use fails the real bind (asyncio's and uvicorn's own rules on which addresses a
        # host means); the start then closes what it had opened (app.run_until_signal).
        return serve(settings)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise OperatorError(f"cannot listen (OCPP {settings.ocpp_host}:{settings.ocpp_port}, API "
                            f"{settings.api_host}:{settings.api_port}): address already in use") from None


def _run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "serve":
        return _serve(args)
    if cmd in ("db", "station", "token"):
        from gateway.logs import setup_logging

        settings = _settings(args)
        # As serve does: --log-level and --log-json are accepted here too, and the migrations'
        # and the database's log lines are the ones that explain a failure.
        setup_logging(settings.log_level, settings.log_json)
        if cmd == "db":
            from gateway.db import migrate

            return migrate.cli(settings, args)
        from gateway.db import admin

        return (admin.station_cli if cmd == "station" else admin.token_cli)(settings, args)
    if cmd == "sim":
        from gateway.logs import setup_logging
        from simulators import fleet

        # Why stations cannot connect (a warning per station and reason) and what the site feed
        # could not send, with the time they happened.
        setup_logging("WARNING")
        return fleet.cli(args)
    if cmd == "scenario":
        from simulators import scenario

        return scenario.cli(args)
    if cmd == "evaluate":
        from gateway.episode import EpisodeError
        from gateway.scheduler import evaluate

        _check_writable("--json", args.json)
        _check_writable("--report", args.report)
        try:
            return evaluate.cli(args)
        except EpisodeError as exc:  # a missing, unreadable or inconsistent episode file
            raise UsageError(str(exc)) from None
    if cmd == "demo":
        from gateway import demo

        return demo.cli(_settings(args), args)
    raise AssertionError(cmd)


if __name__ == "__main__":
    sys.exit(main())
