"""Where in the day the MPC's peak comes from: per day, its highest import against the optimum's,
and both days' highest import in each hour of the episode, in its order (a workplace day from
00 h, a depot's from noon to noon).

    .venv/bin/python bench/mpc_days.py --site workplace --days 8 --seed 1 [--exact]

Runs the evaluator's MPC and perfect-foresight optimum (``gateway.scheduler.evaluate``) over the
days in order (the MPC learns from the earlier ones) and prints one JSON line per day.
"""

from __future__ import annotations

import json

import numpy as np
from benchlib import episode_parser

from gateway.scheduler import evaluate as ev


def main() -> None:
    a = episode_parser(__doc__, days=8).parse_args()
    episodes = ev.generate_episodes(a.site, a.days, a.seed, a.stations)
    _, runs = ev.evaluate(episodes, ["mpc", "optimal"], exact=a.exact)
    by_day: dict[str, dict[str, ev.Run]] = {}
    for r in runs:
        by_day.setdefault(r.episode, {})[r.policy] = r
    for day, pair in by_day.items():
        row: dict[str, object] = {"day": day, "weekday": pair["mpc"].times[0].weekday()}
        for name, run in pair.items():
            hours = np.array([t.hour for t in run.times])
            order = list(dict.fromkeys(int(h) for h in hours))  # the episode's hours, in its order
            row[f"{name}_peak_kw"] = round(float(run.net_kw.max()), 1)
            row[f"{name}_peak_at"] = run.times[int(run.net_kw.argmax())].strftime("%H:%M")
            row[f"{name}_hourly_max_kw"] = [round(float(run.net_kw[hours == h].max(initial=0.0))) for h in order]
            row["hours"] = order
        row["mpc_shortfall_kwh"] = round(float(pair["mpc"].metrics["shortfall_kwh"]), 1)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
