"""What the live plans expect the EVs to draw against what they draw, over one `gateway demo` run.

    .venv/bin/python bench/demo_draw.py [--seed 17] [--time-scale 600] [--highest-draw]

Runs the demo in this process (embedded Postgres unless GATEWAY_DATABASE_URL is set, ports 8000
and 9000 as `make demo`) and prints one JSON object:
- ``by_hour``: per hour of the simulated day from 07:00 to 15:00, the mean of the EV power each
  plan put in its first step (``planned_kw``) and the mean EV power metered (``drawn_kw``);
- ``offline_by_hour``: the evaluator's MPC on the same episode (the energy system's building
  forecast, as the demo pushes it): the mean EV power per hour, what the live draw compares with;
- ``by_soc``: at every re-plan from 08:00 to 15:00, for each session with a planned limit in
  force, that limit and what the session draws, summed by whether the EV told its battery
  (``iso``: capacity known) and whether its SoC is at 80 % or more (``taper``): the share drawn.
``--highest-draw``: an EV limited by itself planned at its highest draw, as before
``slots.DrawSeen`` kept what it takes now (docs/benchmarks.md, "The demo").
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from gateway import cli
from gateway.demo import DEMO_SEED, demo_episode
from gateway.scheduler import evaluate as ev
from gateway.scheduler import live_inputs, problem, slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=DEMO_SEED)
    ap.add_argument("--time-scale", type=float, default=600.0)
    ap.add_argument("--highest-draw", action="store_true")
    a = ap.parse_args()
    # The demo's episode (gateway/demo.py), planned offline first, before anything is patched.
    episode = demo_episode(50, a.seed)
    _, runs = ev.evaluate([episode], ["mpc"], building_forecast="ems")
    run = runs[0]
    hours = np.array([t.hour for t in run.times])
    offline = {h: round(float((run.net_kw - run.building_kw)[hours == h].mean()), 1) for h in range(7, 16)}
    if a.highest_draw:
        slots.DrawSeen.limit_kw = lambda self: self.max_kw if self.limited_by_ev else None  # type: ignore[method-assign]

    planned: dict[int, list[float]] = defaultdict(list)
    by_soc: dict[str, dict[str, float]] = defaultdict(lambda: {"limit_kw": 0.0, "drawn_kw": 0.0})
    solve, build = problem.Planner.solve, live_inputs.build

    def planning(self: problem.Planner, site: problem.SiteInputs, sl: list[problem.SlotInput]) -> Any:
        res = solve(self, site, sl)
        real = [i for i, s in enumerate(sl) if not str(s.key[0]).startswith("expected")]
        planned[site.grid.start.hour].append(float(res.power_kw[real, 0].sum()))
        return res

    def building(state: Any, now: Any, settings: Any, limits_sent_kw: dict[Any, float], *args: Any,
                 **kw: Any) -> Any:
        if 8 <= now.hour < 15:
            for key, st in state.evses.items():
                s, lim = st.session, limits_sent_kw.get(key)
                if s is None or lim is None or lim <= 0.5:
                    continue
                band = ("iso" if s.needs.capacity_kwh is not None else "plain") + (
                    "/taper" if s.soc is not None and s.soc >= 0.8 else "/below")
                by_soc[band]["limit_kw"] += lim
                by_soc[band]["drawn_kw"] += s.power_kw
        return build(state, now, settings, limits_sent_kw, *args, **kw)

    problem.Planner.solve = planning  # type: ignore[method-assign]
    live_inputs.build = building
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        cli.main(["demo", "--seed", str(a.seed), "--time-scale", str(a.time_scale),
                  "--report", str(Path(tmp) / "report.html"), "--json", str(summary)])
        series = json.loads(summary.read_text())["site_series"]
    drawn: dict[int, list[float]] = defaultdict(list)
    for t, kw in zip(series["times"], series["ev_kw"], strict=True):
        drawn[int(t[11:13])].append(kw)
    print(json.dumps({
        "highest_draw": a.highest_draw,
        "by_hour": {h: {"planned_kw": round(sum(planned[h]) / max(len(planned[h]), 1), 1),
                        "drawn_kw": round(sum(drawn[h]) / max(len(drawn[h]), 1), 1)} for h in range(7, 16)},
        "offline_by_hour": offline,
        "by_soc": {k: {**{n: round(v, 1) for n, v in b.items()},
                       "share_drawn": round(b["drawn_kw"] / b["limit_kw"], 3) if b["limit_kw"] else None}
                   for k, b in sorted(by_soc.items())},
    }))


if __name__ == "__main__":
    main()
