"""The live demo against the evaluator's MPC on the same episode, EV by EV.

    GATEWAY_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/demo gateway demo [--seed 17]
    .venv/bin/python bench/demo_vs_offline.py --database-url postgresql://postgres@127.0.0.1:5432/demo \
        [--seed 17] [--demo-json demo.json]

Reads the finished demo's transactions and meter registers from its database, plans the same
episode offline (`gateway evaluate --building-forecast ems`, as the demo pushes its energy
system's forecast), matches each EV to its transaction (station, EVSE, plug-in within ten
minutes) and prints one JSON object:
- ``by_group``: the energy metered into the EVs of a group by 09:00, 11:00 and 13:00 (simulated
  time), live and offline, for all EVs, ISO 15118 or not, and by whether the EV's target lies
  above 80 % SoC (its battery's constant-voltage taper);
- ``by_hour``: the mean EV power per hour and the highest site import (5-minute means), offline
  and, from the demo's ``--json`` file, live.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from gateway.demo import DEMO_SEED, demo_episode
from gateway.scheduler import evaluate as ev

CUT_HOURS = (9, 11, 13)


async def live_rows(url: str) -> tuple[list[Any], dict[str, list[tuple[datetime, float]]]]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        txs = await conn.fetch("SELECT station_id, evse_id, transaction_id, started_at FROM transactions")
        regs = await conn.fetch("SELECT transaction_id, ts, value FROM meter_values "
                                "WHERE measurand = 'Energy.Active.Import.Register' ORDER BY ts")
    finally:
        await conn.close()
    series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for r in regs:
        series[r["transaction_id"]].append((r["ts"], r["value"] / 1000.0))
    return list(txs), series


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True, help="the demo run's database")
    ap.add_argument("--seed", type=int, default=DEMO_SEED)
    ap.add_argument("--stations", type=int, default=50)
    ap.add_argument("--demo-json", help="the demo's --json file, for the live hourly figures")
    a = ap.parse_args()
    episode = demo_episode(a.stations, a.seed)
    _, runs = ev.evaluate([episode], ["mpc"], building_forecast="ems")
    run = runs[0]
    txs, series = asyncio.run(live_rows(a.database_url))
    day = episode.start.replace(hour=0, minute=0, second=0, microsecond=0)
    cuts = [day + timedelta(hours=h) for h in CUT_HOURS]
    h = ev.STEP_S / 3600.0
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"evs": 0, "live_kwh": np.zeros(len(cuts)),
                                                             "offline_kwh": np.zeros(len(cuts))})
    for t in run.evs:
        arr = t.arrival
        match = [x for x in txs if x["station_id"] == arr.station_id and x["evse_id"] == arr.evse_id
                 and abs((x["started_at"] - arr.arrival).total_seconds()) < 600]
        if not match:
            continue
        regs = series.get(match[0]["transaction_id"], [])
        power = run.evse_power[t.key]
        live, offline = np.zeros(len(cuts)), np.zeros(len(cuts))
        for i, cut in enumerate(cuts):
            upto = [kwh for ts, kwh in regs if ts <= cut]
            live[i] = upto[-1] - regs[0][1] if upto else 0.0
            j = sum(1 for tm in run.times if tm < cut)
            # Steps first .. last - 1 are the EV's own (the next EV on the EVSE may follow at last).
            offline[i] = float(np.clip(power[t.first:max(min(j, t.last), t.first)], 0.0, None).sum() * h)
        above = (t.e0 + t.requested) / arr.capacity_kwh > 0.8
        for name in ("all", "iso15118" if arr.iso15118 else "no iso15118",
                     "target above 80 % SoC" if above else "target at or below 80 % SoC"):
            g = groups[name]
            g["evs"] += 1
            g["live_kwh"] += live
            g["offline_kwh"] += offline
    print(json.dumps({
        "cuts": [c.strftime("%H:%M") for c in cuts],
        "by_group": {k: {"evs": g["evs"], "live_kwh": [round(float(x), 1) for x in g["live_kwh"]],
                         "offline_kwh": [round(float(x), 1) for x in g["offline_kwh"]]} for k, g in groups.items()},
        "by_hour": by_hour(run, a.demo_json),
    }))


def by_hour(run: Any, demo_json: str | None) -> dict[int, dict[str, float]]:
    """Mean EV power and highest site import (5-minute means) per hour, offline and (from the
    demo's ``--json``, where given) live."""
    hours = np.array([t.hour for t in run.times])
    ev_kw = run.net_kw - run.building_kw
    out = {hr: {"offline_ev_kw": round(float(ev_kw[hours == hr].mean()), 1),
                "offline_peak_kw": round(float(run.net_kw[hours == hr].max()), 1)}
           for hr in range(6, 20) if (hours == hr).any()}
    if demo_json:
        with open(demo_json) as f:
            site = json.load(f)["site_series"]
        live_ev: dict[int, list[float]] = defaultdict(list)
        live_net: dict[int, list[float]] = defaultdict(list)
        for t, kw, net in zip(site["times"], site["ev_kw"], site["net_kw"], strict=True):
            live_ev[int(t[11:13])].append(kw)
            live_net[int(t[11:13])].append(net)
        for hr, row in out.items():
            if live_ev[hr]:
                row["live_ev_kw"] = round(float(np.mean(live_ev[hr])), 1)
                row["live_peak_kw"] = round(max(live_net[hr]), 1)
    return out


if __name__ == "__main__":
    main()
