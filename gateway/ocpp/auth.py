"""Station authentication: HTTP Basic parsing, argon2id hashes, a verification cache, lock-out.

Security profile 1/2 (OCPP 2.0.1 Part 2 A00.FR.2xx/3xx): the station sends
``Authorization: Basic base64(<stationId>:<password>)``. Neither the header nor the password is
ever logged or put in an exception message.

Cost: argon2id with t=2, m=19 MiB, p=1 (the OWASP minimum) takes about 30 ms on one core here,
so 1,000 stations reconnecting after a restart verify in about 16 s on 2 cores (measured; see
``tests/ocpp/test_auth.py`` for the timing bound). Verification runs on a small thread pool
(argon2 releases the GIL) so the event loop keeps serving connected stations meanwhile, and a
successful verification is remembered for ``credential_cache_s`` under an HMAC of the password
with a per-process key, so a flapping station does not pay argon2 on every reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.clock import Clock

ARGON2_TIME_COST: Final = 2
ARGON2_MEMORY_COST_KIB: Final = 19_456
ARGON2_PARALLELISM: Final = 1
CREDENTIAL_CACHE_ENTRIES_MAX: Final = 100_000
VERIFICATIONS_PENDING_MAX: Final = 1_000  # hard cap; the real bound adapts to the measured cost

_hasher = PasswordHasher(
    time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_COST_KIB, parallelism=ARGON2_PARALLELISM
)
# Compared against when a station has no usable hash, so every refusal costs one argon2 run.
_DUMMY_HASH: Final = _hasher.hash(os.urandom(16).hex())
_executor: ThreadPoolExecutor | None = None


def hash_password(password: str) -> str:
    """A salted argon2id hash (PHC string) for storing a station's password."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; constant work when the hash is missing."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """``(username, password)`` from an ``Authorization: Basic ...`` value, or None if unusable.

    The password may contain ':' (RFC 7617 §2: the user-id may not, so split at the first one).
    """
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    username, sep, password = text.partition(":")
    if not sep:
        return None
    return username, password


def same_text(a: str, b: str) -> bool:
    """Constant-time string equality (for usernames; passwords go through argon2)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="argon2")
    return _executor


class VerifierBusy(Exception):
    """Too much verification work is queued; the station should retry shortly."""


def _workers() -> int:
    return os.cpu_count() or 2


def _verify_before(deadline: float, password_hash: str | None, password: str) -> tuple[bool, float] | None:
    """Runs on the pool: skip work whose handshake has given up meanwhile (None)."""
    start = time.monotonic()
    if start > deadline:
        return None
    ok = verify_password(password_hash, password)
    return ok, time.monotonic() - start


class PasswordVerifier:
    """argon2 verification off the event loop, with a short-lived cache of successes.

    Admission control for reconnect storms (docs/reliability.md L3/L4): a verification is accepted
    only if the work queued ahead of it can finish within ``budget_s`` at the measured cost per
    hash, and work still queued when its budget is over is skipped, so the pool never burns CPU
    on handshakes that already timed out. Refused work raises :class:`VerifierBusy` (HTTP 503).
    """

    def __init__(self, clock: Clock, cache_s: float, *, budget_s: float = 5.0,
                 pending_max: int = VERIFICATIONS_PENDING_MAX) -> None:
        self._clock = clock
        self._cache_s = cache_s
        self._budget_s = budget_s
        self._pending_max = pending_max
        self._hash_s = 0.03  # running estimate of one verification's wall time on the pool
        self.pending = 0
        self._key = os.urandom(32)
        self._cache: dict[tuple[str, str, bytes], datetime] = {}

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()

    def admissible(self) -> int:
        """How many verifications may be queued now."""
        fits = int(self._budget_s * _workers() / max(self._hash_s, 1e-3))
        return max(1, min(self._pending_max, fits))

    async def verify(self, station_id: str, password_hash: str | None, password: str) -> bool:
        """True when the password matches; raises VerifierBusy when the pool is saturated."""
        # The stored hash is part of the key: a changed password invalidates the entry at once.
        key = (station_id, password_hash or "", self._digest(password))
        now = self._clock.now()
        expires = self._cache.get(key)
        if expires is not None and password_hash is not None:
            if expires > now:
                return True
            del self._cache[key]
        if self.pending >= self.admissible():
            raise VerifierBusy
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + self._budget_s
            done = await loop.run_in_executor(_pool(), _verify_before, deadline, password_hash, password)
        finally:
            self.pending -= 1
        if done is None:
            raise VerifierBusy
        ok, took_s = done
        self._hash_s += 0.1 * (took_s - self._hash_s)
        if ok and self._cache_s > 0:
            if len(self._cache) >= CREDENTIAL_CACHE_ENTRIES_MAX:
                self._evict(now)
            self._cache[key] = now + timedelta(seconds=self._cache_s)
        return ok

    def forget(self, station_id: str) -> None:
        for key in [k for k in self._cache if k[0] == station_id]:
            del self._cache[key]

    def _evict(self, now: datetime) -> None:
        for key in [k for k, exp in self._cache.items() if exp <= now]:
            del self._cache[key]
        while len(self._cache) >= CREDENTIAL_CACHE_ENTRIES_MAX:
            del self._cache[next(iter(self._cache))]


class LockedOut(Exception):
    """The id or address is locked out until ``until``."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"locked until {until.isoformat()}")
        self.until = until


class AdmissionTimeout(Exception):
    """No login slot freed up within the wait allowed; the station should retry shortly."""


Key = tuple[str, str]


class LoginAttempt:
    """The login slots one handshake holds, one per key, from admission until it is settled.

    Settle it with :meth:`succeeded` or :meth:`failed`; :meth:`close` releases whatever is
    still held (an exception, a 503), so a slot can never leak.
    """

    def __init__(self, tracker: LockoutTracker, keys: list[Key]) -> None:
        self._tracker = tracker
        self._held = list(keys)

    def succeeded(self) -> None:
        self.close()

    def failed(self, counted: list[Key]) -> list[Key]:
        """Settle as a failed login, counted against the ``counted`` keys (the others are
        released uncounted); returns the keys whose lock-out this failure started."""
        started: list[Key] = []
        for key in self._held:
            if key in counted:
                if self._tracker._settle_failure(key):
                    started.append(key)
            else:
                self._tracker._release(key)
        self._held = []
        return started

    def close(self) -> None:
        for key in self._held:
            self._tracker._release(key)
        self._held = []


class LockoutTracker:
    """At most ``failures_max`` failed logins per minute per key, then locked for ``lockout_s``.

    Keys are station ids and remote addresses (docs/reliability.md S4), tracked separately, e.g.
    ``("id", "CS1")`` and ``("addr", "10.0.0.7")``. Time comes from the Clock.

    S4 must hold under concurrency too: an attempt is counted when it is *admitted*
    (:meth:`admit`), before the directory lookup and the password hash, not when its slow check
    fails. A key admits at most ``failures_max`` attempts minus its failures in the window at
    once; further attempts wait for a slot (a success frees its slot at once, a failure keeps it
    as a failure) and are refused when the key locks. So 200 concurrent wrong passwords for one
    id cost at most ``failures_max`` checks, where counting at failure let 101 through, while a
    reconnect storm of good stations behind one address keeps ``failures_max`` checks in flight,
    more than the hashing pool runs at once.
    """

    WINDOW_S: Final = 60.0
    KEYS_MAX: Final = 100_000

    def __init__(self, clock: Clock, failures_max: int, lockout_s: float) -> None:
        self._clock = clock
        self._max = max(1, failures_max)
        self._lockout = timedelta(seconds=lockout_s)
        self._window = timedelta(seconds=self.WINDOW_S)
        self._failures: dict[Key, deque[datetime]] = {}
        self._locked: dict[Key, datetime] = {}
        self._in_flight: dict[Key, int] = {}
        self._waiters: dict[Key, deque[asyncio.Future[None]]] = {}

    def locked_until(self, key: Key) -> datetime | None:
        until = self._locked.get(key)
        if until is None:
            return None
        if until <= self._clock.now():
            del self._locked[key]
            return None
        return until

    def is_locked(self, key: Key) -> bool:
        return self.locked_until(key) is not None

    def record_failure(self, key: Key) -> bool:
        """Count one failure; True when this failure starts a lock-out."""
        now = self._clock.now()
        if self.is_locked(key):
            return False
        if len(self._failures) >= self.KEYS_MAX:
            self._sweep(now)
        times = self._failures.setdefault(key, deque())
        times.append(now)
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= self._max:
            del self._failures[key]
            self._locked[key] = now + self._lockout
            return True
        return False

    def failures(self, key: Key) -> int:
        now = self._clock.now()
        return sum(1 for t in self._failures.get(key, ()) if t > now - self._window)

    def in_flight(self, key: Key) -> int:
        return self._in_flight.get(key, 0)

    async def admit(self, keys: list[Key], timeout_s: float) -> LoginAttempt:
        """Reserve one slot per key for a login attempt (waiting up to ``timeout_s`` real
        seconds for one to free up). Raises LockedOut or AdmissionTimeout."""
        deadline = time.monotonic() + timeout_s
        attempt = LoginAttempt(self, [])
        try:
            # One global order of acquisition, so two attempts never wait on each other's keys.
            for key in sorted(set(keys)):
                await self._reserve(key, deadline)
                attempt._held.append(key)
        except BaseException:
            attempt.close()
            raise
        return attempt

    async def _reserve(self, key: Key, deadline: float) -> None:
        while True:
            until = self.locked_until(key)
            if until is not None:
                raise LockedOut(until)
            if self.failures(key) + self.in_flight(key) < self._max:
                self._in_flight[key] = self.in_flight(key) + 1
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AdmissionTimeout
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue = self._waiters.setdefault(key, deque())
            queue.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                raise AdmissionTimeout from None
            finally:
                if waiter in queue:
                    queue.remove(waiter)
                if not queue and self._waiters.get(key) is queue:
                    del self._waiters[key]

    def _release(self, key: Key) -> None:
        self._drop_slot(key)
        self._wake(key, everyone=False)  # one slot freed: one waiter may take it

    def _settle_failure(self, key: Key) -> bool:
        self._drop_slot(key)
        started = self.record_failure(key)  # the slot becomes a failure: capacity unchanged
        if started:
            self._wake(key, everyone=True)  # locked: every waiter is refused now
        return started

    def _drop_slot(self, key: Key) -> None:
        n = self._in_flight.get(key, 0) - 1
        if n > 0:
            self._in_flight[key] = n
        else:
            self._in_flight.pop(key, None)

    def _wake(self, key: Key, everyone: bool) -> None:
        for waiter in list(self._waiters.get(key, ())):
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return

    def _sweep(self, now: datetime) -> None:
        for key in [k for k, ts in self._failures.items() if not ts or ts[-1] <= now - self._window]:
            del self._failures[key]
        for key in [k for k, until in self._locked.items() if until <= now]:
            del self._locked[key]
