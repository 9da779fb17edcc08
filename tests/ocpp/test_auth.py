"""Password hashing, Basic parsing, the verification cache and the lock-out tracker."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime

import pytest

from gateway.clock import ManualClock
from gateway.ocpp import auth
from gateway.ocpp.auth import (
    LockoutTracker,
    PasswordVerifier,
    hash_password,
    parse_basic_auth,
    verify_password,
)

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
PW = "a-station-password-of-16+"


def test_hash_is_salted_argon2id_and_verifies() -> None:
    h1, h2 = hash_password(PW), hash_password(PW)
    assert h1.startswith("$argon2id$") and h1 != h2
    assert PW not in h1
    assert verify_password(h1, PW) and verify_password(h2, PW)
    assert not verify_password(h1, PW + "x")
    assert not verify_password(None, PW)
    assert not verify_password("not-a-hash", PW)


async def test_thousand_reconnects_fit_in_sixty_seconds_on_two_cores() -> None:
    """CPU cost per login (immune to other processes sharing the box): 1,000 on 2 cores < 60 s."""
    h = hash_password(PW)
    verifier = PasswordVerifier(ManualClock(T0), cache_s=0)  # no cache: every login pays argon2
    n = 16
    cpu0 = time.process_time()
    results = await asyncio.gather(*(verifier.verify(f"CS{i}", h, PW) for i in range(n)))
    cpu_per_login = (time.process_time() - cpu0) / n
    assert all(results)
    seconds_for_1000 = cpu_per_login * 1000 / 2
    assert seconds_for_1000 < 60.0, f"1,000 logins need {seconds_for_1000:.1f} s of 2 cores"
    assert cpu_per_login > 0.005  # and the hash is still slow enough to resist offline guessing


def _hdr(text: bytes) -> str:
    return "Basic " + base64.b64encode(text).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (_hdr(b"CS1:pw"), ("CS1", "pw")),
        (_hdr(b"CS1:pw:with:colons"), ("CS1", "pw:with:colons")),
        ("basic " + base64.b64encode(b"CS1:pw").decode(), ("CS1", "pw")),
        (_hdr("CS\u00e4:p\u00fc".encode()), ("CS\u00e4", "p\u00fc")),
        (_hdr(b"CS1:"), ("CS1", "")),
        (None, None),
        ("", None),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic !!!notbase64", None),
        (_hdr(b"no-colon"), None),
    ],
)
def test_parse_basic_auth(header: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_basic_auth(header) == expected


async def test_cache_skips_argon2_until_expiry_and_is_keyed_by_password_and_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[str] = []
    real = auth.verify_password

    def counting(password_hash: str | None, password: str) -> bool:
        runs.append(password)
        return real(password_hash, password)

    monkeypatch.setattr(auth, "verify_password", counting)
    clock = ManualClock(T0)
    verifier = PasswordVerifier(clock, cache_s=300)
    h = hash_password(PW)
    assert await verifier.verify("CS1", h, PW)
    assert await verifier.verify("CS1", h, PW)
    assert len(runs) == 1  # second login served from the cache
    assert not await verifier.verify("CS1", h, "wrong")
    assert not await verifier.verify("CS1", h, "wrong")
    assert len(runs) == 3  # failures are never cached
    new_hash = hash_password("another-password-123")
    assert not await verifier.verify("CS1", new_hash, PW)  # password changed: cache misses
    clock.advance(301)
    assert await verifier.verify("CS1", h, PW)
    assert len(runs) == 5  # expired entry: argon2 again


def test_lockout_after_max_failures_per_minute_then_released() -> None:
    clock = ManualClock(T0)
    tracker = LockoutTracker(clock, failures_max=10, lockout_s=60)
    key = ("id", "CS1")
    for _ in range(9):
        assert not tracker.record_failure(key)
        clock.advance(1)
    assert not tracker.is_locked(key)
    assert tracker.record_failure(key)  # the 10th failure within a minute locks
    assert tracker.is_locked(key) and not tracker.is_locked(("addr", "10.0.0.1"))
    assert not tracker.record_failure(key)  # already locked: not counted again
    clock.advance(59)
    assert tracker.is_locked(key)
    clock.advance(1.5)
    assert not tracker.is_locked(key)
    assert tracker.failures(key) == 0


def test_failures_spread_over_more_than_a_minute_do_not_lock() -> None:
    clock = ManualClock(T0)
    tracker = LockoutTracker(clock, failures_max=10, lockout_s=60)
    for _ in range(30):
        assert not tracker.record_failure(("addr", "10.0.0.9"))
        clock.advance(7)  # ~8.6 failures per sliding minute
    assert not tracker.is_locked(("addr", "10.0.0.9"))


async def test_verifier_refuses_work_beyond_its_queue_bound() -> None:
    h = hash_password(PW)
    verifier = PasswordVerifier(ManualClock(T0), cache_s=0, pending_max=2)
    results = await asyncio.gather(*(verifier.verify(f"CS{i}", h, PW) for i in range(3)),
                                   return_exceptions=True)
    assert results[:2] == [True, True]
    assert isinstance(results[2], auth.VerifierBusy)
    assert verifier.pending == 0
    assert await verifier.verify("CS9", h, PW)  # capacity is back once the queue drained


async def test_work_whose_budget_expired_in_the_queue_is_skipped() -> None:
    h = hash_password(PW)
    verifier = PasswordVerifier(ManualClock(T0), cache_s=0, budget_s=0.0)
    with pytest.raises(auth.VerifierBusy):
        await verifier.verify("CS1", h, PW)
    assert verifier.pending == 0
