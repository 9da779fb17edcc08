"""OCPP transport load: N authenticated stations speaking raw OCPP-J against a gateway.

Each station connects (Basic auth, id LOAD00001...), boots, reports its connector, then the
whole fleet sends Heartbeat / TransactionEvent (Started, Updated..., Ended with increasing
seqNo) / MeterValues at ``--rate`` messages per second in total, one outstanding CALL per
station. Prints connect time, achieved messages/s, reply latency percentiles, errors, and the
gateway's memory per connection (VmRSS from /proc/PID/status before and after connecting).

    # transport only: an OcppServer with in-memory peers in a child process
    python bench/ocpp_load.py --inprocess --stations 1000 --rate 200 --duration 60
    # idle memory
    python bench/ocpp_load.py --inprocess --stations 5000 --rate 0 --duration 10
    # the full gateway (`gateway serve`, admits unregistered ids: DEV ONLY)
    python bench/ocpp_load.py --spawn --database-url postgresql+asyncpg://... --stations 1000 --rate 200
    # an already running gateway
    python bench/ocpp_load.py --url ws://127.0.0.1:9000/ocpp --gateway-pid 1234 --password ...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PASSWORD = "load-test-password-0001"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@dataclass
class Stats:
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class LoadStation:
    """One simulated station: a socket, a reader task and one outstanding CALL at a time."""

    def __init__(self, station_id: str, stats: Stats) -> None:
        self.id = station_id
        self.stats = stats
        self.ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._waiting: tuple[str, asyncio.Future[list[Any]]] | None = None
        self.seq = 0
        self.tx: str | None = None

    async def connect(self, url: str, password: str, timeout_s: float) -> None:
        token = base64.b64encode(f"{self.id}:{password}".encode()).decode()
        self.ws = await connect(f"{url}/{self.id}", subprotocols=[Subprotocol("ocpp2.0.1")],
                                additional_headers={"Authorization": f"Basic {token}"},
                                compression=None, open_timeout=timeout_s, ping_interval=None,
                                max_queue=4)
        asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg[0] == 2:  # the CSMS asks something: accept it
                    await self.ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                elif self._waiting is not None and self._waiting[0] == msg[1]:
                    self._waiting[1].set_result(msg)
        except ConnectionClosed:
            pass
        if self._waiting is not None and not self._waiting[1].done():
            self._waiting[1].set_exception(ConnectionError("closed"))

    async def call(self, action: str, payload: dict[str, Any], timeout_s: float = 30.0,
                   record: bool = True) -> list[Any] | None:
        assert self.ws is not None
        mid = f"{next(self._ids)}"
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting = (mid, fut)
        t0 = time.perf_counter()
        try:
            await self.ws.send(json.dumps([2, mid, action, payload]))
            async with asyncio.timeout(timeout_s):
                reply = await fut
        except TimeoutError:
            self.stats.error("timeout")
            return None
        except (ConnectionError, ConnectionClosed):
            self.stats.error("closed")
            return None
        finally:
            self._waiting = None
        if record:
            self.stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
            self.stats.sent += 1
        if reply[0] != 3:
            self.stats.error(f"CALLERROR {reply[2]}")
        return reply

    def next_message(self) -> tuple[str, dict[str, Any]]:
        """The station's next message: a session cycle with meter values, and heartbeats."""
        ts = now_rfc3339()
        meter = [{"timestamp": ts, "sampledValue": [
            {"value": round(random.uniform(0, 11000), 1), "measurand": "Power.Active.Import"}]}]
        step = self.seq % 8
        if step == 0:
            return "Heartbeat", {}
        if self.tx is None:
            self.tx = f"{self.id}-{self.seq}"
            return "TransactionEvent", {
                "eventType": "Started", "timestamp": ts, "triggerReason": "CablePluggedIn", "seqNo": self.seq,
                "transactionInfo": {"transactionId": self.tx}, "evse": {"id": 1, "connectorId": 1},
                "idToken": {"idToken": "TOKEN1", "type": "ISO14443"}}
        if step == 7:
            tx, self.tx = self.tx, None
            return "TransactionEvent", {
                "eventType": "Ended", "timestamp": ts, "triggerReason": "EVDeparted", "seqNo": self.seq,
                "transactionInfo": {"transactionId": tx, "stoppedReason": "EVDisconnected"},
                "meterValue": meter}
        if step % 2:
            return "MeterValues", {"evseId": 1, "meterValue": meter}
        return "TransactionEvent", {
            "eventType": "Updated", "timestamp": ts, "triggerReason": "MeterValuePeriodic", "seqNo": self.seq,
            "transactionInfo": {"transactionId": self.tx}, "meterValue": meter}

    async def run_load(self, interval_s: float, until: float) -> None:
        await asyncio.sleep(random.uniform(0, interval_s))  # spread the fleet's phases
        next_at = time.perf_counter()
        while next_at < until:
            action, payload = self.next_message()
            self.seq += 1
            await self.call(action, payload)
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, url: str, gateway_pid: int | None) -> int:
    stats = Stats()
    stations = [LoadStation(f"{args.id_prefix}{i:05d}", stats) for i in range(1, args.stations + 1)]
    before = rss_kib(gateway_pid) if gateway_pid else None
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def bring_up(st: LoadStation) -> bool:
        failure = "no attempt"
        for _attempt in range(args.connect_attempts):
            async with gate:
                try:
                    await st.connect(url, args.password, timeout_s=60)
                    break
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    retry_s = float(exc.response.headers.get("Retry-After", "2"))
                    failure = f"HTTP {status}"
                except Exception as exc:
                    failure, retry_s = type(exc).__name__, 2.0
            # Back off like a station would (OCPP 2.0.1 B10: randomized reconnect back-off).
            stats.retries[failure] = stats.retries.get(failure, 0) + 1
            await asyncio.sleep(retry_s * random.uniform(1.0, 2.0))
        else:
            stats.error(f"connect {failure}")
            return False
        await st.call("BootNotification", {"reason": "PowerUp",
                                           "chargingStation": {"model": "Load", "vendorName": "Bench"}},
                      record=False)
        await st.call("StatusNotification", {"timestamp": now_rfc3339(), "connectorStatus": "Available",
                                             "evseId": 1, "connectorId": 1}, record=False)
        return True

    t0 = time.perf_counter()
    ok = await asyncio.gather(*(bring_up(st) for st in stations))
    connect_s = time.perf_counter() - t0
    live = [st for st, up in zip(stations, ok, strict=True) if up]
    print(f"connected {len(live)}/{len(stations)} stations in {connect_s:.1f} s "
          f"({len(live) / connect_s:.0f}/s, each with BootNotification + StatusNotification); "
          f"handshake retries: {stats.retries or 0}")
    if gateway_pid:
        await asyncio.sleep(2.0)  # let the gateway settle (allocator, pending tasks)
        after = rss_kib(gateway_pid)
        if before is not None and after is not None and live:
            per = (after - before) / len(live)
            print(f"gateway RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: "
                  f"{per:.1f} KiB per connection")

    if args.rate > 0:
        interval = len(live) / args.rate
        until = time.perf_counter() + args.duration
        t1 = time.perf_counter()
        await asyncio.gather(*(st.run_load(interval, until) for st in live))
        elapsed = time.perf_counter() - t1
        lat = stats.latencies_ms
        print(f"load: {stats.sent} replies in a {args.duration:g} s window (+{elapsed - args.duration:.1f} s "
              f"phase spread) = {stats.sent / args.duration:.1f} msg/s "
              f"(target {args.rate:g}/s over {len(live)} stations)")
        print(f"reply latency ms: p50 {percentile(lat, 0.5):.2f}  p99 {percentile(lat, 0.99):.2f}  "
              f"p99.9 {percentile(lat, 0.999):.2f}  max {max(lat, default=float('nan')):.2f}")
    else:
        await asyncio.sleep(args.duration)
    if gateway_pid:
        end = rss_kib(gateway_pid)
        print(f"gateway RSS at end {end / 1024:.1f} MiB" if end is not None
              else "gateway RSS at end: no such process (the gateway died)")
    print(f"errors: {sum(stats.errors.values())} {stats.errors or ''}")
    await asyncio.gather(*(st.ws.close() for st in live if st.ws is not None), return_exceptions=True)
    return 0 if not stats.errors else 1


# --- gateways to measure ---------------------------------------------------------------------

async def serve_memory(args: argparse.Namespace) -> None:
    """The transport alone with in-memory peers (child process of --inprocess)."""
    sys.path.insert(0, str(ROOT))
    from gateway.clock import RealClock
    from gateway.config import Settings
    from gateway.ocpp.auth import hash_password
    from gateway.ocpp.server import OcppServer
    from tests.ocpp.peers import MemoryDirectory, RecordingSecuritySink, SimpleHandler

    raise_fd_limit(args.stations + 1000)
    directory = MemoryDirectory()
    shared = hash_password(args.password)  # one hash, but every login still runs argon2 once
    for i in range(1, args.stations + 1):
        directory.add(f"{args.id_prefix}{i:05d}", None, password_hash=shared)
    settings = Settings(ocpp_host="127.0.0.1", ocpp_port=0)
    server = OcppServer(settings, RealClock(), directory, SimpleHandler(), RecordingSecuritySink())
    port = await server.start()
    print(f"PORT {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent exits
    await server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    if args.inprocess:
        cmd = [sys.executable, __file__, "--serve-memory", "--stations", str(args.stations),
               "--password", args.password, "--id-prefix", args.id_prefix]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit("in-memory server failed to start")
        return proc, f"ws://127.0.0.1:{int(line.split()[1])}/ocpp"
    # The whole gateway on its own fresh database, every station registered with the password,
    # so the run pays for real Basic-auth checks (argon2) as a restart would.
    database_url = args.database_url or os.environ.get("GATEWAY_DATABASE_URL")
    if not database_url:
        raise SystemExit("--spawn needs --database-url (or GATEWAY_DATABASE_URL): a Postgres server to use")
    url = args._stack.enter_context(benchlib.fresh_database(database_url))
    benchlib.register_stations(url, [f"{args.id_prefix}{i:05d}" for i in range(1, args.stations + 1)],
                               args.password)
    proc, port = benchlib.spawn_gateway(url, "--no-scheduler")
    return proc, f"ws://127.0.0.1:{port}/ocpp"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:9000/ocpp")
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="messages per second, whole fleet (0: idle)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (or idle)")
    parser.add_argument("--password", default=DEFAULT_PASSWORD)
    parser.add_argument("--id-prefix", default="LOAD")
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--connect-attempts", type=int, default=10)
    parser.add_argument("--gateway-pid", type=int)
    parser.add_argument("--spawn", action="store_true",
                        help="start `gateway serve` on a fresh database with the stations registered")
    parser.add_argument("--database-url")
    parser.add_argument("--inprocess", action="store_true",
                        help="start the OCPP transport alone with in-memory peers (child process)")
    parser.add_argument("--serve-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_memory:
        asyncio.run(serve_memory(args))
        return 0
    raise_fd_limit(args.stations + 1000)
    proc = None
    url, pid = args.url, args.gateway_pid
    with contextlib.ExitStack() as stack:
        args._stack = stack
        if args.spawn or args.inprocess:
            proc, url = spawn(args)
            pid = proc.pid
        try:
            return asyncio.run(run(args, url, pid))
        finally:
            if proc is not None:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.terminate()
                proc.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
