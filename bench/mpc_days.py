"""Where in the day the MPC's peak comes from: per day, its highest import against the optimum's
(when, and what the building drew then; the building's own highest), both days' highest import in each hour and the EVs'
mean power in each hour, in the day's order (a workplace day from 00 h, a depot's from noon to
noon).

    .venv/bin/python bench/mpc_days.py --site workplace --days 8 --seed 1 [--exact]
    .venv/bin/python bench/mpc_days.py --episode FILE [--exact]

Runs the evaluator's MPC and perfect-foresight optimum (``gateway.scheduler.evaluate``) over the
days in order (the MPC learns from the earlier ones) and prints one JSON line per day. With
``--episode`` (a multi-day file from ``gateway scenario generate``: one billing period, a new
site's) the days are the file's calendar days.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
from benchlib import episode_parser

from gateway.episode import load
from gateway.scheduler import evaluate as ev


def days_of(run: ev.Run, by_date: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(label, index of the run's steps) per day: the whole run, or each calendar day of it."""
    if not by_date:
        yield run.episode, np.arange(len(run.times))
        return
    dates = np.array([t.date().isoformat() for t in run.times])
    for d in dict.fromkeys(dates):
        yield d, np.flatnonzero(dates == d)


def main() -> None:
    ap = episode_parser(__doc__, days=8)
    ap.add_argument("--episode", help="one episode file (its days are its calendar days)")
    a = ap.parse_args()
    episodes = [load(a.episode)] if a.episode else ev.generate_episodes(a.site, a.days, a.seed, a.stations)
    _, runs = ev.evaluate(episodes, ["mpc", "optimal"], exact=a.exact)
    rows: dict[str, dict[str, object]] = {}
    for run in runs:
        for day, idx in days_of(run, by_date=a.episode is not None):
            times = [run.times[i] for i in idx]
            net, building = run.net_kw[idx], run.building_kw[idx]
            hours = np.array([t.hour for t in times])
            order = list(dict.fromkeys(int(h) for h in hours))  # the day's hours, in its order
            at = int(net.argmax())
            row = rows.setdefault(day, {"day": day, "weekday": times[0].weekday(), "hours": order,
                                        "building_max_kw": round(float(building.max()), 1)})
            name = run.policy
            row[f"{name}_peak_kw"] = round(float(net.max()), 1)
            row[f"{name}_peak_at"] = times[at].strftime("%H:%M")
            row[f"{name}_building_at_peak_kw"] = round(float(building[at]), 1)
            row[f"{name}_hourly_max_kw"] = [round(float(net[hours == h].max(initial=0.0))) for h in order]
            row[f"{name}_hourly_ev_kw"] = [round(float((net - building)[hours == h].mean())) for h in order]
            if name == "mpc" and not a.episode:
                row["mpc_shortfall_kwh"] = round(float(run.metrics["shortfall_kwh"]), 1)
    for row in rows.values():
        print(json.dumps(row))


if __name__ == "__main__":
    main()
