"""The OCPP WebSocket server: ``ws(s)://HOST:PORT/ocpp/{stationId}``.

Everything that decides whether a station may talk happens in the HTTP handshake
(``process_request``), so no frame reaches OCPP handling before authentication
(docs/reliability.md S1/S2/S4):

    path not /ocpp/{id}                           404
    id empty, > max_station_id_length, ':' in it,
    not printable, not UTF-8 after %-decoding     400   (%-encoded ids are decoded, Part 4 §3.1.1)
    id or remote address locked out               429   (Retry-After; no hashing done)
    no login slot free for the id or address      wait; 503 after handshake_timeout_s / 2
      (attempts counted as admitted, S4)          (429 if the key locks meanwhile)
    station directory unavailable                 503   (Retry-After)
    too many password checks queued (restart)     503   (Retry-After; admission control)
    id not registered (and not allow_unknown)     404   (allow_unknown: admitted, also when
                                                        registered without a password)
    station disabled / no password set            401
    profile >= 2 over plain ws                    401   (A00.FR.3xx: profile 2 needs TLS)
    profile 3 without a verified client
    certificate, or its commonName != station id  401   (A00.FR.4xx; no Basic auth needed)
    a client certificate the station CA does not
    vouch for (foreign CA, expired)               TLS handshake refused (before HTTP); a
                                                        security event with TLS's reason, no id
                                                        or address (not counted for lock-out)
    no/unparsable Basic credentials               401   (WWW-Authenticate: Basic)
    username != station id, wrong password        401   (counts toward the lock-out)

After the handshake a connection without an acceptable subprotocol is closed with 1002. The
newest *authenticated* connection for a station id replaces the live one (its pending CALLs fail
at once and its socket closes within ``TAKEOVER_CLOSE_TIMEOUT_S``); a refused handshake never
touches the live one. A live session ends (1008) when its station is disabled, or when a later
read of its registration finds another password or security profile than it logged in with
(:meth:`OcppServer.check_terms`).

OCPP versions plug in as :class:`VersionAdapter` values keyed by subprotocol.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import unquote, urlsplit
from weakref import WeakKeyDictionary

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.clock import Clock, RealClock
from gateway.config import Settings
from gateway.logs import STATION_ID
from gateway.ocpp.auth import (
    AdmissionTimeout,
    LockedOut,
    LockoutTracker,
    LoginAttempt,
    PasswordVerifier,
    VerifierBusy,
    parse_basic_auth,
    same_text,
)
from gateway.ocpp.connection import Connection
from gateway.ocpp.ports import (
    ConnectionObserver,
    MessageHandler,
    SecurityEventSink,
    StationContext,
    StationCredentials,
    StationDirectory,
)
from gateway.ocpp.validation import V201, SchemaSet

log = logging.getLogger("gateway.ocpp.server")


class _RedactCredentials(logging.Filter):
    """websockets logs every request header at DEBUG; the Authorization value never leaves (S2)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == "authorization":
            record.args = (args[0], "[redacted]")
        return True


ws_log = logging.getLogger("gateway.ocpp.websockets")
ws_log.addFilter(_RedactCredentials())

ENDPOINT_PREFIX: Final = "/ocpp/"
TAKEOVER_CLOSE_TIMEOUT_S: Final = 1.0  # S6: the replaced socket is gone within 1 s
TAKEOVER_WINDOW_S: Final = 300.0
TAKEOVERS_BEFORE_EVENT: Final = 3  # S6: "repeated" take-overs raise a security event
CLOSE_PROTOCOL_ERROR: Final = 1002
BUSY_RETRY_AFTER_S: Final = 5


@dataclass(frozen=True, slots=True)
class VersionAdapter:
    """What the transport needs to speak one OCPP version."""

    subprotocol: str
    ocpp_version: str
    schemas: SchemaSet


DEFAULT_ADAPTERS: Final = {"ocpp2.0.1": VersionAdapter("ocpp2.0.1", "2.0.1", V201)}


@dataclass(frozen=True, slots=True)
class _Admission:
    station_id: str
    security_profile: int
    remote_address: str | None
    # What the login was checked against (:func:`login_terms`), and when that registration was
    # read (real seconds, time.monotonic()): a later read that finds other terms ends the session.
    terms: tuple[str | None, int] = (None, 1)
    read_at: float = 0.0


def login_terms(creds: StationCredentials | None) -> tuple[str | None, int]:
    """The parts of a registration a live session was admitted on: its password (as stored) and
    security profile. A certificate station's password is not asked for, so it is not part of its
    terms; an unknown station admitted in DEV mode logged in as an unregistered profile 1 one."""
    if creds is None:
        return (None, 1)
    if creds.security_profile >= 3:
        return (None, creds.security_profile)
    return (creds.password_hash, creds.security_profile)


class ConnectionRegistry:
    """The live connection of each station id (at most one)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}

    def get(self, station_id: str) -> Connection | None:
        return self._by_id.get(station_id)

    def connected_ids(self) -> list[str]:
        return list(self._by_id)

    def count(self) -> int:
        return len(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._by_id.values()))

    def _put(self, conn: Connection) -> Connection | None:
        old = self._by_id.get(conn.station_id)
        self._by_id[conn.station_id] = conn
        return old

    def _remove(self, conn: Connection) -> None:
        if self._by_id.get(conn.station_id) is conn:
            del self._by_id[conn.station_id]


def valid_station_id(raw_segment: str, max_length: int) -> str | None:
    """The decoded station id, or None when it may not be used (S1)."""
    try:
        station_id = unquote(raw_segment, errors="strict")
    except UnicodeDecodeError:
        return None
    if not station_id or len(station_id) > max_length:
        return None
    # ':' separates user-id and password in Basic auth (RFC 7617 §2); '/' would change the path.
    if ":" in station_id or "/" in station_id or not station_id.isprintable():
        return None
    return station_id


# How long a disable keeps closing logins that were checked before it (real seconds): longer
# than any handshake takes.
SHUT_OUT_S = 60.0


class OcppServer:
    """Owns the listening socket, the handshake policy and the connection registry."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        directory: StationDirectory,
        handler: MessageHandler,
        security: SecurityEventSink,
        observer: ConnectionObserver | None = None,
        *,
        adapters: dict[str, VersionAdapter] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.directory = directory
        self.handler = handler
        self.security = security
        self.observer = observer
        self.adapters = dict(adapters or DEFAULT_ADAPTERS)
        self.registry = ConnectionRegistry()
        self.ssl_context = build_ssl_context(settings)
        if self.ssl_context is not None and settings.tls_client_ca is not None:
            self.ssl_context.sslobject_class = reporting_refusals(self._certificate_refused)
        self.lockout = LockoutTracker(clock, settings.auth_failures_per_minute_max, settings.auth_lockout_s)
        # Half the handshake timeout for queueing + hashing leaves room for the rest of it.
        self.verifier = PasswordVerifier(clock, settings.credential_cache_s,
                                         budget_s=settings.handshake_timeout_s / 2)
        self.port: int | None = None
        self._server: Server | None = None
        self._admitted: WeakKeyDictionary[ServerConnection, _Admission] = WeakKeyDictionary()
        # What each live connection was admitted on (see check_terms).
        self._sessions: dict[Connection, _Admission] = {}
        self._connection_ids = itertools.count(1)
        self._takeovers: dict[str, deque[datetime]] = {}
        # Stations disabled by this process lately (real seconds, time.monotonic()): a login that
        # passed its credential check just before the disable must not stay connected after it.
        self._shut_out: dict[str, float] = {}
        # Each station's registration as last read (real seconds, time.monotonic()): while the
        # database is away, a station whose link dropped logs in against it (its password still
        # checked) for credentials_stale_max_s, instead of being refused until the database is
        # back. Forgotten on a disable.
        self._creds_read: dict[str, tuple[float, StationCredentials]] = {}
        # Bumped when a station's registration changes: a credential read under way then is not kept.
        self._creds_changes: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    async def start(self) -> int:
        """Listen on ``settings.ocpp_host:ocpp_port`` (0 picks a free port); return the port."""
        for adapter in self.adapters.values():
            await asyncio.to_thread(adapter.schemas.warm)
        self._server = await serve(
            self._handle,
            self.settings.ocpp_host,
            self.settings.ocpp_port,
            ssl=self.ssl_context,
            process_request=self._process_request,
            subprotocols=[Subprotocol(s) for s in self.adapters],
            select_subprotocol=self._select_subprotocol,
            compression=None,  # permessage-deflate costs ~100s of KiB per socket; OCPP frames are small
            max_size=self.settings.max_frame_bytes,  # larger frames close with 1009
            open_timeout=self.settings.handshake_timeout_s,
            ping_interval=self.settings.ws_ping_interval_s,
            ping_timeout=self.settings.ws_ping_interval_s,
            close_timeout=TAKEOVER_CLOSE_TIMEOUT_S,
            server_header=None,
            logger=ws_log,
        )
        sockets = self._server.sockets
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.settings.ocpp_port
        log.info("OCPP server listening on %s:%s (%s)", self.settings.ocpp_host, self.port,
                 "wss" if self.tls else "ws")
        return self.port

    async def stop(self) -> None:
        """Close every station with 1001 (going away) and return within ``shutdown_drain_s``."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.close(close_connections=True)
        try:
            async with asyncio.timeout(self.settings.shutdown_drain_s):
                await server.wait_closed()
        except TimeoutError:
            log.warning("OCPP server: connections still open after %.1f s", self.settings.shutdown_drain_s)
        for task in list(self._background):
            task.cancel()

    # --- handshake -------------------------------------------------------------------------

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        # None lets the handshake complete; the handler then closes with 1002 and a reason,
        # which tells the station more than an HTTP 400 would.
        for name in self.adapters:
            if name in offered:
                return Subprotocol(name)
        return None

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        remote = _peer_ip(connection)
        path = urlsplit(request.path).path
        if not path.startswith(ENDPOINT_PREFIX) or "/" in path[len(ENDPOINT_PREFIX):]:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        station_id = valid_station_id(path[len(ENDPOINT_PREFIX):], self.settings.max_station_id_length)
        if station_id is None:
            return connection.respond(HTTPStatus.BAD_REQUEST, "Invalid station id\n")

        keys = [("id", station_id), ("addr", remote or "?")]
        for key in keys:
            until = self.lockout.locked_until(key)
            if until is not None:
                return self._locked_out(connection, until)
        # S4: the attempt is counted as it is admitted, before the lookup and the slow hash, so
        # concurrent handshakes cannot run more checks than the lock-out allows (see auth.py).
        try:
            attempt = await self.lockout.admit(keys, self.settings.handshake_timeout_s / 2)
        except LockedOut as exc:
            return self._locked_out(connection, exc.until)
        except AdmissionTimeout:
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Busy, try again later\n")
            response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
            return response
        try:
            return await self._authenticate(connection, request, station_id, remote, attempt)
        finally:
            attempt.close()  # a slot not settled as a failure (admitted, 503, error) is released

    def _locked_out(self, connection: ServerConnection, until: datetime) -> Response:
        response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too many failed logins\n")
        retry = max(1, int((until - self.clock.now()).total_seconds()) + 1)
        response.headers["Retry-After"] = str(retry)
        return response

    async def _authenticate(
        self, connection: ServerConnection, request: Request, station_id: str, remote: str | None,
        attempt: LoginAttempt,
    ) -> Response | None:
        changes = self._creds_changes.get(station_id, 0)
        read_at = time.monotonic()
        try:
            creds = await self.directory.credentials(station_id)
        except Exception as exc:
            seen = self._creds_read.get(station_id)
            if seen is not None and time.monotonic() - seen[0] <= self.settings.credentials_stale_max_s:
                log.warning("station directory unavailable (%s): %s checked against its registration read "
                            "%.0f s ago", exc, station_id, time.monotonic() - seen[0])
                read_at, creds = seen
            else:
                # The directory (database) is unavailable: tell the station to retry later rather
                # than refusing its credentials.
                log.exception("station directory lookup failed for %s", station_id)
                response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Try again later\n")
                response.headers["Retry-After"] = "10"
                return response
        else:
            if creds is None:
                self._creds_read.pop(station_id, None)
            elif self._creds_changes.get(station_id, 0) == changes:
                # Not a read that began before a change (a new password) and ended after it.
                self._creds_read[station_id] = (read_at, creds)
        if creds is None:
            if self.settings.allow_unknown_stations:
                self._admitted[connection] = _Admission(station_id, 1, remote, login_terms(None), read_at)
                return None
            self._failure(None, remote, "unknown_station", f"unknown station id {station_id!r}", attempt)
            return connection.respond(HTTPStatus.NOT_FOUND, "Unknown station\n")

        if creds.security_profile >= 3:
            refusal = self._check_certificate(creds, connection, remote, attempt)
            if refusal is not None:
                return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            self._admitted[connection] = _Admission(station_id, creds.security_profile, remote,
                                                    login_terms(creds), read_at)
            return None
        if creds.password_hash is None and creds.enabled and self.settings.allow_unknown_stations:
            # DEV mode: a station registered without a password (e.g. auto-registered on an
            # earlier visit) is admitted like an unknown one.
            self._admitted[connection] = _Admission(station_id, 1, remote, login_terms(creds), read_at)
            return None
        try:
            refusal = await self._check_credentials(creds, request.headers, remote, attempt)
        except VerifierBusy:
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Busy, try again later\n")
            response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
            return response
        if refusal is not None:
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="OCPP", charset="UTF-8"'
            return response
        self._admitted[connection] = _Admission(station_id, creds.security_profile, remote,
                                                login_terms(creds), read_at)
        return None

    async def _check_credentials(
        self, creds: StationCredentials, headers: Headers, remote: str | None, attempt: LoginAttempt
    ) -> str | None:
        """None when the station may connect, else the refusal kind (already recorded)."""
        sid = creds.station_id
        if not creds.enabled or creds.password_hash is None:
            return self._failure(sid, remote, "station_disabled", "disabled or no password set", attempt)
        if creds.security_profile >= 2 and not self.tls:
            return self._failure(sid, remote, "insecure_transport", "profile 2 station over plain ws", attempt)
        basic = parse_basic_auth(headers.get("Authorization"))
        if basic is None:
            return self._failure(sid, remote, "auth_missing", "no usable Basic credentials", attempt)
        username, password = basic
        name_ok = same_text(username, sid)
        # Verify even when the name is wrong so the refusal costs the same time.
        password_ok = await self.verifier.verify(sid, creds.password_hash, password)
        if not (name_ok and password_ok):
            kind = "auth_failed" if name_ok else "auth_username_mismatch"
            return self._failure(sid, remote, kind, "wrong credentials", attempt)
        return None

    def _check_certificate(self, creds: StationCredentials, connection: ServerConnection,
                           remote: str | None, attempt: LoginAttempt) -> str | None:
        """Security profile 3 (A00.FR.4xx): the station proves its identity with a TLS client
        certificate signed by the configured CA, whose subject commonName is its id. TLS has
        already verified the chain and validity (a certificate that fails that never gets here:
        the handshake is refused); this checks that there was one and whose it is."""
        sid = creds.station_id
        if not creds.enabled:
            return self._failure(sid, remote, "station_disabled", "disabled", attempt)
        if self.ssl_context is None or self.settings.tls_client_ca is None:
            return self._failure(sid, remote, "client_certificate_required",
                                 "profile 3 needs wss with a station CA (--tls-client-ca)", attempt)
        cert = connection.transport.get_extra_info("peercert")
        if not cert:
            return self._failure(sid, remote, "client_certificate_required", "no client certificate", attempt)
        names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        if not any(same_text(n, sid) for n in names):
            return self._failure(sid, remote, "certificate_id_mismatch",
                                 "certificate commonName is not the station id", attempt)
        return None

    def _certificate_refused(self, exc: ssl.SSLCertVerificationError) -> None:
        """TLS refused a station's certificate (another CA's, expired, revoked...): the handshake
        fails before any HTTP, so no id is known, and the TLS layer does not tell us the peer's
        address either; the refusal is still a security event (docs/reliability.md S3)."""
        self._event(None, "client_certificate_refused", f"TLS refused a client certificate: {exc.verify_message}",
                    None)

    def _failure(self, station_id: str | None, remote: str | None, kind: str, detail: str,
                 attempt: LoginAttempt) -> str:
        """Settle the attempt as a failed login of the id (when known) and the address;
        record a security event."""
        self._event(station_id, kind, detail, remote)
        keys = ([("id", station_id)] if station_id is not None else []) + [("addr", remote or "?")]
        for key in attempt.failed(keys):
            self._event(station_id, "auth_lockout",
                        f"{key[0]} locked for {self.settings.auth_lockout_s:g} s", remote)
        return kind

    def _event(self, station_id: str | None, kind: str, detail: str, remote: str | None) -> None:
        # Recorded (and logged, once) by the sink, in the background: a slow sink must not slow
        # the handshake down.
        self._spawn(self._record(station_id, kind, detail, remote))

    async def _record(self, station_id: str | None, kind: str, detail: str, remote: str | None) -> None:
        try:
            await self.security.security_event(station_id, kind, detail, remote)
        except Exception:
            log.exception("security event sink failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- live connections ------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        admission = self._admitted.pop(ws, None)
        if admission is None:  # cannot happen: process_request admitted every handshake
            await ws.close(1008, "not admitted")
            return
        # Every log line of this connection and of the handler tasks it starts carries the id.
        STATION_ID.set(admission.station_id)
        adapter = self.adapters.get(ws.subprotocol or "")
        if adapter is None:
            offer = ", ".join(self.adapters)
            await ws.close(CLOSE_PROTOCOL_ERROR, f"no supported subprotocol: offer {offer}")
            return
        ctx = StationContext(
            station_id=admission.station_id,
            remote_address=admission.remote_address,
            security_profile=admission.security_profile,
            connected_at=self.clock.now(),
            ocpp_version=adapter.ocpp_version,
            connection_id=next(self._connection_ids),
            opened_at=RealClock().now(),
        )
        conn = Connection(ws, ctx, self.handler, adapter.schemas, call_timeout_s=self.settings.call_timeout_s)
        shut = self._shut_out.get(ctx.station_id)
        if shut is not None and time.monotonic() - shut < SHUT_OUT_S:
            await ws.close(1008, "station disabled")
            return
        old = self.registry._put(conn)
        self._sessions[conn] = admission
        if old is not None:
            old.replace()
            self._note_takeover(ctx)
        await self._notify_connected(ctx)
        try:
            await conn.run()
        finally:
            self.registry._remove(conn)
            self._sessions.pop(conn, None)
            await self._notify_disconnected(ctx, ws.close_code)
            # Let a CALL being handled finish (e.g. a commit) before the handler task ends,
            # so stop() drains in-flight work within its deadline.
            await conn.wait_handlers()

    async def shut_out(self, station_id: str) -> None:
        """The station was disabled: close its live connection, and one whose login was checked
        before the disable and is still being set up (the credential check and the argon2 hash
        come before the connection is registered). Remembered for SHUT_OUT_S only, so another
        node's enable is never outlived; later logins are refused by the stored flag."""
        self._shut_out[station_id] = time.monotonic()
        self.forget_registration(station_id)
        conn = self.registry.get(station_id)
        if conn is not None:
            await conn.close(1008, "station disabled")

    async def check_terms(self, station_id: str, creds: StationCredentials | None, read_at: float) -> None:
        """The station's registration as read at ``read_at`` (monotonic seconds): a live session
        admitted on an earlier read of other terms (another password, another security profile,
        the station removed) is closed, so a password replaced because it leaked stops working at
        once rather than at the station's next reconnection. The station then logs in again with
        what it holds. A read older than the session's own login says nothing about it, nor does
        one that began after the login's but ran before it (a busy pool): the registration is read
        once more before the session is closed."""
        conn = self.registry.get(station_id)
        admission = self._sessions.get(conn) if conn is not None else None
        if conn is None or admission is None or admission.read_at >= read_at:
            return
        if admission.terms == login_terms(creds):
            return
        try:
            fresh = await self.directory.credentials(station_id)
        except Exception as exc:  # the read that found other terms stands
            log.warning("registration of %s not read again before closing its session: %s", station_id, exc)
        else:
            if admission.terms == login_terms(fresh):
                return
        if self.registry.get(station_id) is not conn:
            return  # gone, or replaced by a login of its own meanwhile
        self._event(station_id, "credentials_changed",
                    "registration changed since its login (password or security profile): session closed",
                    admission.remote_address)
        await conn.close(1008, "credentials changed")

    def let_in(self, station_id: str, enabled_as_of: float | None = None) -> None:
        """The station was enabled again (as a read begun at ``enabled_as_of``, monotonic
        seconds, found it: a disable since then stands)."""
        shut = self._shut_out.get(station_id)
        if shut is not None and (enabled_as_of is None or shut < enabled_as_of):
            del self._shut_out[station_id]

    def forget_registration(self, station_id: str) -> None:
        """The station's registration changed (its password may have): the copy read at its last
        login is not used while the database is away, nor one being read now; its next login
        reads the new one."""
        self._creds_read.pop(station_id, None)
        self._creds_changes[station_id] = self._creds_changes.get(station_id, 0) + 1

    def _note_takeover(self, ctx: StationContext) -> None:
        now = self.clock.now()
        times = self._takeovers.setdefault(ctx.station_id, deque())
        times.append(now)
        while times and times[0] <= now - timedelta(seconds=TAKEOVER_WINDOW_S):
            times.popleft()
        log.info("%s: new connection %d replaced the live one", ctx.station_id, ctx.connection_id)
        if len(times) >= TAKEOVERS_BEFORE_EVENT:
            times.clear()
            self._event(ctx.station_id, "repeated_takeover",
                        f"{TAKEOVERS_BEFORE_EVENT} take-overs within {TAKEOVER_WINDOW_S:g} s",
                        ctx.remote_address)

    async def _notify_connected(self, ctx: StationContext) -> None:
        if self.observer is not None:
            try:
                await self.observer.station_connected(ctx)
            except Exception:
                log.exception("observer.station_connected failed for %s", ctx.station_id)

    async def _notify_disconnected(self, ctx: StationContext, code: int | None) -> None:
        if self.observer is not None:
            try:
                await self.observer.station_disconnected(ctx, code)
            except Exception:
                log.exception("observer.station_disconnected failed for %s", ctx.station_id)


def _peer_ip(connection: ServerConnection) -> str | None:
    try:
        addr = connection.remote_address
    except Exception:
        return None
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return None


def reporting_refusals(on_refused: Callable[[ssl.SSLCertVerificationError], None]) -> type[ssl.SSLObject]:
    """An SSLObject class (``SSLContext.sslobject_class``) that reports every peer certificate
    the TLS handshake refuses before re-raising: asyncio's TLS layer drops those connections
    silently, and a refused station certificate must leave a trace."""

    class RefusalReporting(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except ssl.SSLCertVerificationError as exc:
                on_refused(exc)
                raise

    return RefusalReporting


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for security profiles 2 and 3 when a certificate and key are configured (TLS >= 1.2,
    A00.FR.308); station certificates are requested when a station CA is configured.

    ``None`` (plain ws) only when no TLS setting is given. Half a set-up raises ValueError: it used
    to fall back to plain ws without a word, and an operator who asked for wss got stations
    sending their passwords in clear. Settings refuses it when read; this guards copies made
    around the validation (``model_copy``) and any other caller."""
    if settings.tls_cert is None and settings.tls_key is None and settings.tls_client_ca is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        missing = " and ".join(n for n in ("tls_cert", "tls_key") if getattr(settings, n) is None)
        raise ValueError(f"TLS is half configured: no {missing}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_client_ca is not None:
        # Profile 3: ask every station for a certificate and verify any it presents against the
        # station CA; profile 1 and 2 stations on the same port present none and log in with
        # Basic auth as before.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(settings.tls_client_ca))
    return ctx

