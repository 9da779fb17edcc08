"""Why a simulated station cannot connect is said once per reason, at WARNING, and `gateway sim`
ends by counting the stations that never booted by that reason."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from gateway.clock import ScaledClock
from gateway.domain import EvseSpec
from gateway.episode import StationSpec
from simulators.station import Station, StationConfig
from tests.simulators.sim_process import episode_file, run_sim

START = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
FAST = StationConfig(retry_backoff_wait_minimum_real_s=0.05, retry_backoff_random_range_real_s=0.05,
                     retry_backoff_repeat_times=0, aligned_interval_sim_s=0)
RUN_REAL_S = 0.6  # FAST retries every 0.05-0.1 s: several attempts in this time


def spec(sid: str = "CS-1") -> StationSpec:
    return StationSpec(sid, (EvseSpec(sid, 1, 11.0, 0.0, False),))


@contextlib.asynccontextmanager
async def _refusing(status: Callable[[], int]) -> AsyncIterator[str]:
    """A WebSocket server that answers every handshake with the HTTP status ``status()`` gives."""

    def process_request(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus(status()), "refused\n")

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("no handshake is to succeed")

    server: Server = await serve(handler, "127.0.0.1", 0, process_request=process_request)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/ocpp"
    finally:
        server.close()
        await server.wait_closed()


async def _run_briefly(station: Station) -> None:
    task = asyncio.create_task(station.run())
    await asyncio.sleep(RUN_REAL_S)
    await station.stop()
    await asyncio.wait_for(task, 10)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "simulators.station" and r.levelno == logging.WARNING]


@pytest.mark.parametrize(("status", "meaning"), [
    (404, "not registered: pass --register, or add it with `gateway station add`"),
    (401, "password not accepted: check --password"),
    (429, "locked out after failed logins"),
])
async def test_a_refused_handshake_is_warned_once_with_its_status_and_meaning(
        status: int, meaning: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="simulators.station")
    async with _refusing(lambda: status) as url:
        st = Station(spec(), url, password="pw", clock=ScaledClock(START, 60.0), config=FAST)
        await _run_briefly(st)
    (reason, attempts), = st.connect_failures.items()
    assert attempts >= 3 and reason.startswith(f"refused with HTTP {status} (") and meaning in reason
    assert st.last_connect_failure == reason
    assert _warnings(caplog) == [f"CS-1: cannot connect: {reason}"]


async def test_each_new_reason_is_warned_once_more(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="simulators.station")
    answers = iter([404, 404, 401, 401, 404])
    async with _refusing(lambda: next(answers, 401)) as url:
        st = Station(spec(), url, password="pw", clock=ScaledClock(START, 60.0), config=FAST)
        await _run_briefly(st)
    warned = _warnings(caplog)
    assert len(warned) == 2 and "HTTP 404" in warned[0] and "HTTP 401" in warned[1]
    assert st.connect_failures[warned[0].split(": ", 2)[2]] == 3


async def test_a_refused_connection_asks_whether_the_gateway_runs_at_the_url(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="simulators.station")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/ocpp"
    st = Station(spec(), url, password="pw", clock=ScaledClock(START, 60.0), config=FAST)
    await _run_briefly(st)
    assert _warnings(caplog) == [f"CS-1: cannot connect: connection refused (is the gateway running at {url}?)"]
    assert sum(st.connect_failures.values()) >= 3


async def test_the_stations_that_never_booted_are_counted_by_reason() -> None:
    from simulators.fleet import not_booted_message, not_booted_reasons

    clock = ScaledClock(START, 60.0)
    a, b, c, d = (Station(spec(f"CS-{i}"), "ws://x/ocpp", clock=clock) for i in range(4))
    a.booted.set()
    b.last_connect_failure = c.last_connect_failure = "refused with HTTP 404 (not registered)"
    d.boot_status = "Rejected"
    reasons = not_booted_reasons([a, b, c, d])
    assert reasons == {"refused with HTTP 404 (not registered)": 2, "connected, BootNotification answered Rejected": 1}
    summary = {"stations": {"count": 4, "booted": 1, "not_booted": reasons}}
    assert not_booted_message(summary) == ("only 1/4 stations booted: 2 refused with HTTP 404 (not registered); "
                                           "1 connected, BootNotification answered Rejected")
    assert not_booted_message({"stations": {"count": 4, "booted": 4, "not_booted": {}}}) is None


async def test_gateway_sim_says_why_unregistered_stations_did_not_boot(tmp_path: Path, gateway_server: Any) -> None:
    ep_path, episode = episode_file(tmp_path, stations=2, seed=4)
    code, stderr = await run_sim(gateway_server.ocpp_url, ep_path, episode, hours=1)
    assert code == 1, stderr
    meaning = "refused with HTTP 404 (not registered: pass --register, or add it with `gateway station add`)"
    for s in episode.stations:
        assert stderr.count(f"{s.id}: cannot connect: {meaning}") == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == f"gateway sim: only 0/2 stations booted: 2 {meaning}"


def test_a_host_that_refused_on_every_address_reads_as_refused() -> None:
    from simulators.station import connect_failure

    url = "ws://localhost:9000/ocpp"
    both = OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 9000, 0, 0), "
                   "[Errno 111] Connect call failed ('127.0.0.1', 9000)")
    assert connect_failure(both, url) == f"connection refused (is the gateway running at {url}?)"
    mixed = OSError("Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 9000), "
                    "[Errno 99] Cannot assign requested address")
    assert connect_failure(mixed, url).startswith(f"could not connect to {url}: Multiple exceptions")


async def test_a_warning_during_the_progress_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    """The progress line is redrawn in place: a warning logged to the same terminal meanwhile
    used to be written at its end."""
    import io
    import re

    from simulators.fleet import Fleet
    from simulators.scenario import ScenarioOptions, generate

    episode = generate(ScenarioOptions(site="workplace", stations=1, days=1, seed=3))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fleet = Fleet(episode, f"ws://127.0.0.1:{port}/ocpp", password="x" * 16,
                  clock=ScaledClock(episode.start, scale=1.0), progress=True, progress_stream=stream)
    try:
        await fleet.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while "(peak" not in stream.getvalue():
            assert loop.time() < deadline, "no progress line drawn"
            await asyncio.sleep(0.02)
        logging.getLogger("simulators.station").warning("a station's warning")
        await fleet.stop()
        logging.getLogger("simulators.station").warning("after the run")
    finally:
        root.removeHandler(handler)
    out = stream.getvalue()
    assert "WARNING a station's warning\n" in out
    assert re.search(r"\(peak [\d.]+\)[^\r\n]", out) is None, out  # nothing written after a progress line
    assert out.endswith("\nWARNING after the run\n") and "\n\n" not in out, out  # ended once, never twice
