"""The MPC over a billing period of many days, after a period that taught it the site.

    .venv/bin/python bench/mpc_monthly.py --site workplace --days 20 --seed 1 [--peak-levels on|off]

Two consecutive periods from the scenario generator, each one episode (one billing period, the
demand charge on its highest interval): ``days`` days from the generator's start with seeds
``seed..``, then ``days`` more with seeds ``seed+days..``. The MPC runs through the first (it learns
dwells, arrivals, the building and the peaks its days needed, as a gateway that has been running
does) and is scored on the second against uncontrolled charging and the perfect-foresight optimum
of that period (one LP over all of it: about a minute and 1 GB at 20 days). ``--peak-levels``:
price a rise of the period's peak from the peaks finished days needed
(``gateway/scheduler/peak_price.py``, the default) or at one day's share of the charge (the rule
before). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta

from gateway.scheduler import evaluate as ev
from gateway.scheduler.policies import Mpc
from simulators.scenario import DEFAULT_START, ScenarioOptions, generate

PENALTY = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", default="workplace")
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stations", type=int, default=50)
    ap.add_argument("--peak-levels", choices=["on", "off"], default="on")
    a = ap.parse_args()
    started = time.perf_counter()
    periods = [generate(ScenarioOptions(site=a.site, stations=a.stations, days=a.days, seed=a.seed + p * a.days,
                                        start=DEFAULT_START + timedelta(days=p * a.days))) for p in range(2)]
    mpc = ev.make_policy("mpc", PENALTY, ev.mpc_forecaster())
    assert isinstance(mpc, Mpc)
    mpc.price_peak_levels = a.peak_levels == "on"
    bar = ev.Progress(1, False)
    runs = []
    for i, ep in enumerate(periods):
        ev.bill_by(mpc, ep)
        run = ev.simulate(ep, mpc, exact=False, penalty=PENALTY, progress=bar)
        if i == 1:
            runs.append(run)
    scored = periods[1]
    runs.append(ev.simulate(scored, ev.make_policy("uncontrolled", PENALTY, ev.mpc_forecaster()), exact=False,
                            penalty=PENALTY, progress=bar))
    runs.append(ev.simulate(scored, ev.optimal_policy(scored, PENALTY, 600.0), exact=False, penalty=PENALTY,
                            progress=bar))
    summary = ev.summarise(runs, ["uncontrolled", "mpc", "optimal"])
    res = summary["policies"]
    m, o, u = res["mpc"], res["optimal"], res["uncontrolled"]

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    print(json.dumps({
        "site": a.site, "days": a.days, "seed": a.seed, "peak_levels": a.peak_levels,
        "savings_capture_total": rounded(m["savings_capture_total"]),
        "savings_capture": rounded(m["savings_capture"]), "warnings": summary["warnings"],
        "bill": round(m["bill"], 2), "bill_optimal": round(o["bill"], 2), "bill_uncontrolled": round(u["bill"], 2),
        "demand_charge": round(m["demand_charge"], 2), "demand_charge_optimal": round(o["demand_charge"], 2),
        "peak_kw": round(m["peak_import_kw"], 1), "peak_kw_optimal": round(o["peak_import_kw"], 1),
        "peak_kw_uncontrolled": round(u["peak_import_kw"], 1),
        "deliverable_served_share": round(m["deliverable_served_share"], 5),
        "needed_peaks_kw": [round(x) for x in mpc.peaks.values()],
        "wall_s": round(time.perf_counter() - started),
    }))


if __name__ == "__main__":
    main()
