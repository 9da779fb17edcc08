"""L3/L4: a gateway with N connected simulated stations gets SIGTERM and comes back; how long
until every station is connected again, and did every TransactionEvent the fleet sent land once?

Stations are the real simulators (simulators/station.py) with the spec's randomized reconnect
back-off (RetryBackOffWaitMinimum 3 s doubling, +0..5 s random); ``--zero-backoff`` makes them
knock again at once (L4: admission control must keep the gateway standing).

    python bench/restart_storm.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test \
        --stations 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

from gateway.clock import ScaledClock
from simulators.fleet import Fleet
from simulators.scenario import ScenarioOptions, generate
from simulators.station import StationConfig

PASSWORD = "restart-storm-password-1"


async def wait_all(fleet: Fleet, what: str, limit_s: float) -> float:
    t0 = time.perf_counter()
    while True:
        up = sum(1 for st in fleet.stations.values() if st.connected.is_set())
        if up == len(fleet.stations):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > limit_s:
            raise SystemExit(f"{what}: only {up}/{len(fleet.stations)} connected after {limit_s:g} s")
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace, database_url: str) -> int:
    episode = generate(ScenarioOptions(site="workplace", stations=args.stations, days=1, seed=5))
    # A few hours of the day: enough EVs plugged in to keep transactions flowing through the restart.
    episode = replace(episode, start=episode.start + timedelta(hours=7))
    await asyncio.to_thread(benchlib.register_stations, database_url, [s.id for s in episode.stations], PASSWORD)
    proc, port = await asyncio.to_thread(benchlib.spawn_gateway, database_url, "--no-scheduler", "--time-scale",
                                         str(args.time_scale), "--sim-start", episode.start.isoformat())
    cfg = StationConfig(heartbeat_default_sim_s=300.0)
    if args.zero_backoff:
        cfg = replace(cfg, retry_backoff_wait_minimum_real_s=0.0, retry_backoff_random_range_real_s=0.0)
    clock = ScaledClock(episode.start, args.time_scale)
    fleet = Fleet(episode, f"ws://127.0.0.1:{port}/ocpp", password=PASSWORD, clock=clock, config=cfg)
    await fleet.start()
    try:
        first = await wait_all(fleet, "first connect", 300)
        print(f"{args.stations} stations connected in {first:.1f} s")
        await asyncio.sleep(args.warm_s)
        t_stop = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        print(f"SIGTERM: gateway exited {code} in {time.perf_counter() - t_stop:.1f} s")
        t_start = time.perf_counter()
        proc, _ = await asyncio.to_thread(
            benchlib.spawn_gateway, database_url, "--no-scheduler", "--time-scale", str(args.time_scale),
            "--sim-start", clock.now().isoformat(), port=port)
        print(f"new gateway listening {time.perf_counter() - t_start:.1f} s after start")
        await wait_all(fleet, "reconnect", 300)
        back = time.perf_counter() - t_start
        print(f"all {args.stations} stations reconnected {back:.1f} s after the new gateway started "
              f"({time.perf_counter() - t_stop:.1f} s after SIGTERM)")
        await asyncio.sleep(args.warm_s)
    finally:
        await fleet.stop()
        proc.terminate()
        proc.wait(20)
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    stored = await conn.fetchval("SELECT count(*) FROM transaction_events")
    expected = await conn.fetchval("SELECT coalesce(sum(max_seq_no + 1), 0) FROM transactions")
    gaps = await conn.fetchval("SELECT count(*) FROM transaction_seq_gaps WHERE closed_at IS NULL")
    await conn.close()
    # The stations' side: every TransactionEvent they queued, the ones the CSMS answered (it
    # answers only once stored), and the ones still unsent when the fleet stopped. Unique
    # (station, transactionId, seqNo) makes duplicates impossible; a lost event is one answered
    # and not stored, or stored events short of the seqNos below a transaction's highest.
    queued = sum(st.tx_queued for st in fleet.stations.values())
    acked = sum(st.tx_acked for st in fleet.stations.values())
    dropped = sum(st.tx_dropped for st in fleet.stations.values())
    unsent = queued - acked - dropped
    print(f"transaction events: sent and answered={acked}, stored={stored}, unsent at stop={unsent}, "
          f"dropped by the stations={dropped}; seqNos 0..max of every transaction: {expected}, "
          f"open gaps={gaps}")
    # An event stored whose answer was lost with the link is retried and answered again: so
    # stored == answered once every station has emptied its outbox.
    ok = stored == acked and unsent == 0 and dropped == 0 and stored == expected and gaps == 0
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("GATEWAY_DATABASE_URL"))
    ap.add_argument("--stations", type=int, default=1000)
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--warm-s", type=float, default=10.0, help="real seconds of traffic before and after")
    ap.add_argument("--zero-backoff", action="store_true", help="L4: stations reconnect without waiting")
    args = ap.parse_args()
    if not args.database_url:
        raise SystemExit("--database-url (or GATEWAY_DATABASE_URL) is required")
    with benchlib.fresh_database(args.database_url) as url:
        return asyncio.run(run(args, url))


if __name__ == "__main__":
    sys.exit(main())
