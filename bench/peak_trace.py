"""How the evaluator's MPC sets the day's peak on the last day of a run: at each re-plan in a window
(every ``--every`` minutes), the peak so far, the building and the EVs' draw now, the plan's peak
and the step it falls on, the building forecast there and what the EVs present and the expected
arrivals draw there in the plan, and the plan's first twelve steps of site import. The trace
behind "Where the bill's gap is" in docs/benchmarks-scheduler.md:

    .venv/bin/python bench/peak_trace.py --site workplace --days 19 --seed 1 --from 07:30 --to 10:30 [--exact]

Runs the MPC (``gateway.scheduler.evaluate``, the same code as ``gateway evaluate``) over the days
in order and prints one JSON line per re-plan in the window.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from benchlib import episode_parser

from gateway.scheduler import evaluate as ev
from gateway.scheduler import policies


def main() -> None:
    ap = episode_parser(__doc__, days=19)
    ap.add_argument("--from", dest="start", default="07:30", help="HH:MM, the episode's clock")
    ap.add_argument("--to", dest="end", default="10:30")
    ap.add_argument("--every", type=int, default=15, help="minutes between the re-plans printed")
    a = ap.parse_args()
    episodes = ev.generate_episodes(a.site, a.days, a.seed, a.stations)
    last_day = episodes[-1].start.date()
    act = policies.Mpc.act

    def traced(self: policies.Mpc, ctx: policies.Context) -> dict[Any, float]:
        out = act(self, ctx)
        now, plan = ctx.now, self.last_plan
        if (now.date() != last_day or not a.start <= now.strftime("%H:%M") <= a.end or now.minute % a.every
                or plan is None or not ctx.views):
            return out
        imp = plan.site_import_kw
        k = int(np.argmax(imp))
        n = len(self.keys)
        print(json.dumps({
            "at": now.strftime("%H:%M"), "peak_so_far_kw": round(ctx.peak_so_far_kw, 1),
            "building_now_kw": round(ctx.building_kw, 1), "evs_now_kw": round(sum(out.values()), 1),
            "plan_peak_kw": round(float(imp.max()), 1), "plan_peak_at": plan.grid.starts()[k].strftime("%H:%M"),
            "building_there_kw": round(float(imp[k] - plan.power_kw[:, k].sum()), 1),
            "present_there_kw": round(float(plan.power_kw[:n, k].sum()), 1),
            "expected_there_kw": round(float(plan.power_kw[n:, k].sum()), 1),
            "import_first_steps_kw": [round(float(x)) for x in imp[:12]]}))
        return out

    policies.Mpc.act = traced  # type: ignore[method-assign]
    ev.evaluate(episodes, ["mpc"], exact=a.exact)


if __name__ == "__main__":
    main()
