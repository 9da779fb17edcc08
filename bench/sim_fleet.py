"""How many simulated stations one process drives at real-time cadence.

    .venv/bin/python bench/sim_fleet.py --stations 250 500 1000 2000 --duration 60
    .venv/bin/python bench/sim_fleet.py --stations 1000 --url ws://127.0.0.1:9000/ocpp --password P

Without ``--url`` a minimal CSMS (``simulators.loopback_csms``) runs in a *separate process*, so
the figures are the simulator's alone. Every station has two EVSEs with an EV charging on each
(so every meter interval produces two TransactionEvents), a heartbeat, and the physics loop, all
on a real-time clock (scale 1). Reported per N: the worst and 99th-percentile lateness of the
stations' periodic work (meter and heartbeat timers), the event-loop lag seen by a 100 ms probe,
the TransactionEvents answered within the window against the periodic ones due in it, the backlog
left in the outboxes, and CPU use (with the loopback CSMS, also what it received over the whole run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import statistics
import time
from datetime import timedelta
from typing import Any

from gateway.clock import RealClock
from gateway.domain import EvseSpec
from gateway.episode import Arrival, StationSpec
from simulators.loopback_csms import LoopbackCsms
from simulators.station import Station, StationConfig

PROBE_S = 0.1


def _serve(port_q: Any, stop_ev: Any, count_q: Any, heartbeat_s: int) -> None:
    async def main() -> None:
        csms = LoopbackCsms(RealClock(), heartbeat_interval_s=heartbeat_s)
        csms.received = _Counter()
        await csms.start()
        port_q.put(csms.url)
        while not stop_ev.is_set():
            await asyncio.sleep(0.2)
        count_q.put(dict(csms.received.by_action))
        await csms.stop()

    asyncio.run(main())


class _Counter(list[Any]):
    """Counts instead of keeping every message (the bench would otherwise measure memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_action: dict[str, int] = {}

    def append(self, item: Any) -> None:
        self.by_action[item.action] = self.by_action.get(item.action, 0) + 1


async def _probe(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(PROBE_S)
        lags.append(loop.time() - t - PROBE_S)


async def run_one(
    n: int, url: str, password: str | None, duration_s: float, meter_s: float, freeze_gc: bool = True
) -> dict[str, Any]:
    clock = RealClock()
    config = StationConfig(
        meter_interval_sim_s=meter_s,
        aligned_interval_sim_s=0,
        validate_messages=True,
        retry_backoff_wait_minimum_real_s=1.0,
        retry_backoff_random_range_real_s=2.0,
    )
    stations: list[Station] = []
    t0 = clock.now()
    for i in range(n):
        sid = f"BENCH-{i:05d}"
        spec = StationSpec(sid, tuple(EvseSpec(sid, e, 11.0, 11.0, True) for e in (1, 2)))
        st = Station(spec, url, password=password, clock=clock, config=config)
        stations.append(st)
    lags: list[float] = []
    stop = asyncio.Event()
    cpu0, wall0 = time.process_time(), time.monotonic()
    tasks = []
    for i, st in enumerate(stations):
        arrivals = [
            Arrival(
                id=f"{st.id}-{e}",
                station_id=st.id,
                evse_id=e,
                arrival=t0,
                departure=t0 + timedelta(hours=10),
                arrival_soc=0.2,
                capacity_kwh=100.0,
                energy_kwh=70.0,
                max_charge_kw=11.0,
                id_token=f"T{i}",
                iso15118=bool(e == 1),
            )
            for e in (1, 2)
        ]
        tasks.append(asyncio.create_task(st.run(arrivals)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # connect in waves, as a site's stations would after an outage
    boot_wait = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(s.booted.wait() for s in stations)), 120)
    boot_s = time.monotonic() - boot_wait
    # Let every EV plug in and be authorized, so the window measures steady running, not the storm.
    while not all(e.session and e.session.authorized for s in stations for e in s.evses.values()):
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)
    if freeze_gc:
        gc.freeze()  # as Fleet does once its stations are up: old objects leave the GC's scans
    for s in stations:
        s.max_lag_real_s = 0.0  # measure steady state, not the connection storm
    gc_pauses: list[float] = []
    gc_start: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start.append(time.perf_counter())
        elif gc_start:
            gc_pauses.append(time.perf_counter() - gc_start.pop())

    gc.callbacks.append(on_gc)
    probe = asyncio.create_task(_probe(lags, stop))
    cpu1, wall1 = time.process_time(), time.monotonic()
    acked1 = sum(s.tx_acked for s in stations)
    await asyncio.sleep(duration_s)
    cpu2, wall2 = time.process_time(), time.monotonic()
    acked2 = sum(s.tx_acked for s in stations)
    stop.set()
    await probe
    gc.callbacks.remove(on_gc)
    station_lags = sorted(s.max_lag_real_s for s in stations)
    backlog = sum(s.outbox_len for s in stations)
    for s in stations:
        await s.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "stations": n,
        "boot_all_s": round(boot_s, 2),
        "timer_lag_max_s": round(station_lags[-1], 3),
        "timer_lag_p99_s": round(station_lags[int(0.99 * (len(station_lags) - 1))], 3),
        "loop_lag_p99_s": round(sorted(lags)[int(0.99 * (len(lags) - 1))], 3) if lags else None,
        "loop_lag_mean_s": round(statistics.fmean(lags), 4) if lags else None,
        "outbox_backlog": backlog,
        # Answered within the measured window, against the periodic ones due in it (2 EVSEs per
        # station): short of it, the simulator fell behind.
        "tx_answered_in_window": acked2 - acked1,
        "periodic_tx_due_in_window": int(n * 2 * duration_s / meter_s),
        "gc_pause_max_s": round(max(gc_pauses, default=0.0), 3),
        "cpu_share": round((cpu2 - cpu1) / (wall2 - wall1), 3),
        "setup_cpu_s": round(cpu1 - cpu0, 2),
        "setup_wall_s": round(wall1 - wall0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds per size")
    ap.add_argument("--meter-interval", type=float, default=60.0, help="TxUpdatedInterval, seconds")
    ap.add_argument("--heartbeat", type=int, default=60, help="heartbeat interval the loopback CSMS gives")
    ap.add_argument("--url", help="drive a running gateway instead of the loopback CSMS")
    ap.add_argument("--password")
    ap.add_argument("--no-gc-freeze", action="store_true", help="measure without gc.freeze() after boot")
    args = ap.parse_args()
    for n in args.stations:
        ctx = mp.get_context("spawn")
        proc = None
        url = args.url
        stop_ev = ctx.Event()
        count_q: Any = ctx.Queue()
        if url is None:
            port_q: Any = ctx.Queue()
            proc = ctx.Process(target=_serve, args=(port_q, stop_ev, count_q, args.heartbeat), daemon=True)
            proc.start()
            url = port_q.get(timeout=30)
        result = asyncio.run(run_one(n, url, args.password, args.duration, args.meter_interval, not args.no_gc_freeze))
        if proc is not None:
            stop_ev.set()
            counts = count_q.get(timeout=30)
            proc.join(10)
            result["csms_received_whole_run"] = counts  # boot storm and wind-down included
        print(result, flush=True)


if __name__ == "__main__":
    main()
