"""D3: N stations each send M queued offline TransactionEvents on reconnect; how long until all
are stored exactly once (docs/reliability.md D3; the target: 100 x 200 = 20,000 within 60 s).

Starts `gateway serve` on a fresh database (created on the server of --database-url, dropped at
the end), opens N raw OCPP-J stations that send their backlog one CALL at a time (as real stations
do), and replays every 10th event a second time with a new message id (a station that timed out).

    python bench/offline_replay.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "offline-bench-password-01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(seq: int, tid: str) -> dict[str, object]:
    kind = "Started" if seq == 0 else "Updated"
    return {
        "eventType": kind, "timestamp": f"2026-07-01T{8 + seq // 60:02d}:{seq % 60:02d}:00Z",
        "triggerReason": "CablePluggedIn" if seq == 0 else "MeterValuePeriodic", "seqNo": seq, "offline": True,
        "transactionInfo": {"transactionId": tid}, "evse": {"id": 1, "connectorId": 1},
        "meterValue": [{"timestamp": f"2026-07-01T{8 + seq // 60:02d}:{seq % 60:02d}:00Z",
                        "sampledValue": [{"value": 100.0 * seq}, {"value": 7000.0,
                                                                  "measurand": "Power.Active.Import"}]}],
    }


async def station(url: str, sid: str, events: int, latencies: list[float]) -> int:
    auth = base64.b64encode(f"{sid}:{PASSWORD}".encode()).decode()
    async with connect(f"{url}/{sid}", subprotocols=[Subprotocol("ocpp2.0.1")],
                       additional_headers={"Authorization": f"Basic {auth}"}, open_timeout=60) as ws:
        tid = f"{sid}-tx"
        sent = 0
        for seq in range(events):
            for attempt in range(2 if seq % 10 == 0 else 1):
                mid = f"{sid}-{seq}-{attempt}"
                t0 = time.perf_counter()
                await ws.send(json.dumps([2, mid, "TransactionEvent", event(seq, tid)]))
                reply = json.loads(await ws.recv())
                latencies.append(time.perf_counter() - t0)
                if reply[0] != 3:
                    raise RuntimeError(f"{sid}: {reply}")
                sent += 1
        return sent


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("GATEWAY_DATABASE_URL"))
    ap.add_argument("--stations", type=int, default=100)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--profile", help="write a py-spy flame graph of the gateway to this file")
    args = ap.parse_args()
    if not args.database_url:
        sys.exit("--database-url (or GATEWAY_DATABASE_URL) is required")
    plain = args.database_url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(plain)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
    port, api = free_port(), free_port()
    env = {**os.environ, "GATEWAY_DATABASE_URL": db_url}
    gw = subprocess.Popen([str(ROOT / ".venv/bin/gateway"), "serve", "--migrate", "--allow-unknown-stations",
                           "--no-scheduler", "--ocpp-port", str(port), "--api-port", str(api),
                           "--log-level", "WARNING"], env=env)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        spy = None
        if args.profile:
            spy = subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "-o", args.profile, "-p", str(gw.pid),
                                    "-f", "speedscope", "--nonblocking"])
        latencies: list[float] = []
        t0 = time.perf_counter()
        sent = await asyncio.gather(*(station(f"ws://127.0.0.1:{port}/ocpp", f"OFF{i:04d}", args.events, latencies)
                                      for i in range(args.stations)))
        elapsed = time.perf_counter() - t0
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        db = await asyncpg.connect(plain.rsplit("/", 1)[0] + f"/{name}")
        stored = await db.fetchval("SELECT count(*) FROM transaction_events")
        dupes = await db.fetchval("SELECT count(*) FROM (SELECT 1 FROM transaction_events GROUP BY station_id, "
                                  "transaction_id, seq_no HAVING count(*) > 1) d")
        await db.close()
        latencies.sort()
        expected = args.stations * args.events
        print(f"stations={args.stations} events/station={args.events} frames sent={sum(sent)} "
              f"(incl. {sum(sent) - expected} replays)")
        # Events a second counts what was stored; the replays are frames on top of it.
        print(f"stored={stored}/{expected} duplicates={dupes} elapsed_s={elapsed:.1f} "
              f"events_per_s={stored / elapsed:.0f} frames_per_s={sum(sent) / elapsed:.0f}")
        print(f"reply latency ms: p50={latencies[len(latencies) // 2] * 1e3:.1f} "
              f"p99={latencies[int(len(latencies) * 0.99)] * 1e3:.1f}")
        return 0 if stored == expected and dupes == 0 else 1
    finally:
        gw.terminate()
        gw.wait(15)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
