"""What the evaluator's MPC believed about one EV on the last day of a run: at each quarter hour
of a window, its departure as the plan prices it (each possible departure: the time of the step
end it is priced at and the probability there), its need (and the slot's energy and target, where
a guessed need shows) and what it was planned to draw, and what the EVSE drew. The trace behind
"A departure inside a step" in docs/benchmarks-scheduler.md:

    .venv/bin/python bench/slot_trace.py --site workplace --days 6 --seed 21 --evse WORK-0008/2 \\
        --from 15:45 --to 18:00 [--departure-in-step whole]

Runs the MPC (``gateway.scheduler.evaluate``, the same code as ``gateway evaluate``) over the days
in order and prints one JSON line per quarter hour in the window on the last day, while the EV
is plugged in, then one line with what that EV really did.
"""

from __future__ import annotations

import json
from datetime import datetime, time
from typing import Any

import numpy as np
from benchlib import episode_parser, use_departures_at_whole_steps

from gateway.scheduler import evaluate as ev
from gateway.scheduler import policies


def main() -> None:
    ap = episode_parser(__doc__, days=6)
    ap.add_argument("--evse", required=True, help="STATION/EVSE, e.g. WORK-0008/2")
    ap.add_argument("--from", dest="start", default="15:00", help="HH:MM, site clock of the episode (UTC here)")
    ap.add_argument("--to", dest="end", default="18:00")
    ap.add_argument("--departure-in-step", choices=("split", "whole"), default="split",
                    help="whole: each possible departure at the last whole step before it (the version before)")
    a = ap.parse_args()
    station, evse = a.evse.rsplit("/", 1)
    key = (station, int(evse))
    lo, hi = time.fromisoformat(a.start), time.fromisoformat(a.end)
    if a.departure_in_step == "whole":
        use_departures_at_whole_steps()
    episodes = ev.generate_episodes(a.site, a.days, a.seed, a.stations)
    last_day = episodes[-1].start.date()
    act = policies.Mpc.act

    def traced(self: policies.Mpc, ctx: policies.Context) -> dict[Any, float]:
        out = act(self, ctx)
        now: datetime = ctx.now
        views = {v.key: v for v in ctx.views}
        plan = self.last_plan
        if (now.date() != last_day or not lo <= now.time() <= hi or now.minute % 15 or key not in views
                or plan is None or key not in self.keys):
            return out
        v = views[key]
        grid = plan.grid
        sl = self._slot(key, v, grid, now)
        ends = [grid.start.timestamp() + float(e) for e in np.cumsum(grid.durations_s)]
        at = [(datetime.fromtimestamp(ends[k], now.tzinfo).strftime("%H:%M"), round(w, 3))
              for k, _, w in sl.early_targets]
        i = self.keys.index(key)
        last = int(np.flatnonzero(sl.connected)[-1]) if sl.connected.any() else 0
        print(json.dumps({
            "at": now.strftime("%H:%M"), "believed_departure": v.departure.strftime("%H:%M") if v.departure else None,
            "departure_points": at,
            "rest_at": [datetime.fromtimestamp(ends[last], now.tzinfo).strftime("%H:%M"), round(sl.unmet_weight, 3)],
            "need_kwh": v.need_kwh, "delivered_kwh": round(v.delivered_kwh, 2),
            # The slot's energy now and its target, on its scale (from plug-in where the battery
            # is not known): a guessed need shows here.
            "slot_energy_kwh": round(sl.energy_kwh, 2), "slot_target_kwh": round(sl.target_energy_kwh, 2),
            "planned_kw_now": round(float(plan.power_kw[i, 0]), 2), "drawn_kw": round(out.get(key, 0.0), 2)}))
        return out

    policies.Mpc.act = traced  # type: ignore[method-assign]
    _, runs = ev.evaluate(episodes, ["mpc"], exact=a.exact)
    for t in runs[-1].evs:
        if t.key == key and t.arrival.arrival.date() == last_day:
            arr = t.arrival
            print(json.dumps({"ev": arr.id, "arrival": arr.arrival.strftime("%H:%M"),
                              "departure": arr.departure.strftime("%H:%M"),
                              "announced_departure": arr.announced_departure.strftime("%H:%M")
                              if arr.announced_departure else None,
                              "requested_kwh": round(t.requested, 1), "delivered_kwh": round(t.energy - t.e0, 1)}))


if __name__ == "__main__":
    main()
