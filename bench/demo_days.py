"""The demo's day for many seeds, planned offline: what a newcomer running ``gateway demo --seed N``
would see of V2G, before running it.

    .venv/bin/python bench/demo_days.py [--seeds 1-24] [--stations 50] [--lent-back on|off]

Each seed's episode is the demo's (``gateway.demo.demo_episode``: one workplace day, every charger
bidirectional, an export request in the afternoon), planned by the evaluator's MPC on its own, a
site with no history as the demo is, with the energy system's building forecast the demo pushes
(``gateway evaluate --episode ... --building-forecast ems``). One JSON line per seed: the export
request (start, end, payment), the MPC's bill against uncontrolled charging, its grid-event
revenue, the EVs it discharged (``lenders``: how many, the kWh they gave, the kWh they were left
short of their deliverable energy), the share of EVs fully served, and how many EVs tell their
departure or need through the driver app (the demo's REST updates: EVs without ISO 15118 that
announce one, or change their need mid-session). ``--lent-back off``: energy lent to the export
request priced only by the departure spread (the version before ``SlotRules.lent_back``).
"""

from __future__ import annotations

import argparse
import json

from benchlib import lenders, use_lent_back

from gateway.demo import demo_episode
from gateway.scheduler import evaluate as ev


def seeds(spec: str) -> list[int]:
    lo, _, hi = spec.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1-24", help="a seed or a range, e.g. 7 or 1-24")
    ap.add_argument("--stations", type=int, default=50)
    ap.add_argument("--lent-back", choices=("on", "off"), default="on")
    a = ap.parse_args()
    if a.lent_back == "off":
        use_lent_back(False)
    for seed in seeds(a.seeds):
        episode = demo_episode(a.stations, seed)
        result, runs = ev.evaluate([episode], ["uncontrolled", "mpc"], building_forecast="ems")
        mpc, unc = result["policies"]["mpc"], result["policies"]["uncontrolled"]
        app = sum(1 for x in episode.arrivals
                  if not x.iso15118 and (x.announced_departure is not None or x.need_change is not None))
        event = episode.grid_events[0] if episode.grid_events else None
        print(json.dumps({
            "seed": seed, "lent_back": a.lent_back,
            "event": None if event is None else [event.start.strftime("%H:%M"), event.end.strftime("%H:%M"),
                                                 event.payment_per_kwh],
            "bill": round(mpc["bill"], 2), "bill_uncontrolled": round(unc["bill"], 2),
            "grid_event_revenue": round(mpc["grid_event_revenue"], 2),
            "lenders": lenders([r for r in runs if r.policy == "mpc"]),
            "evs_fully_served_share": round(mpc["evs_fully_served_share"], 3),
            "driver_app_evs": app,
        }), flush=True)


if __name__ == "__main__":
    main()
