"""How often re-plans change what the chargers were told, with EVs sharing a binding site limit.

    .venv/bin/python bench/profile_churn.py [--evs 3] [--replans 24] [--urgency-spread S]

A site of N 11-kW EVSEs under a 20-kW import limit, flat price, each EV plugged in with a
driver's departure (3, 6, 9 h ...) and energy (20, 30, 40 kWh ...). Every 5 simulated minutes the
live planning code re-plans (``live_inputs.build`` + ``Planner``), each plan becomes the EVSEs'
TxProfiles (``profiles.build_profile``), and the EVs draw exactly what their profile allows until
the next re-plan. Printed: how many profiles would be sent again (``profiles.differs``, as the live
loop decides) and how often an EVSE's limit now changes from one re-plan to the next.
``--urgency-spread``: ``problem.URGENCY_SPREAD`` for the run (0: no tie-break between EVs).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

from gateway import events as ev
from gateway.config import Settings, SiteConfig
from gateway.domain import DischargeDialect, EvseSpec, Preferences
from gateway.ocpp import profiles
from gateway.scheduler import live_inputs, problem
from gateway.scheduler.problem import Planner
from gateway.state import EvseState, SiteState

STEP = timedelta(minutes=5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evs", type=int, default=3)
    ap.add_argument("--replans", type=int, default=24)
    ap.add_argument("--urgency-spread", type=float, default=None)
    args = ap.parse_args()
    if args.urgency_spread is not None:
        problem.URGENCY_SPREAD = args.urgency_spread
    settings = Settings(site=SiteConfig(import_limit_kw=20.0, export_limit_kw=0.0, demand_charge_per_kw=0.0),
                        anticipate_arrivals=False)
    state = SiteState.from_settings(settings)
    now = datetime(2026, 7, 1, 8, 2, 30, tzinfo=UTC)
    keys = []
    for i in range(args.evs):
        spec = EvseSpec(f"CS-{i}", 1, max_charge_kw=11.0)
        state.evses[spec.key] = EvseState(spec, online=True)
        state.apply(ev.SessionStarted(now, spec.station_id, 1, f"TX-{i}", None))
        state.set_preferences(spec.station_id, f"TX-{i}", Preferences(
            departure_time=now + timedelta(hours=3 * (i + 1)), energy_kwh=20.0 + 10.0 * i))
        keys.append(spec.key)
    planner = Planner()
    sent: dict[tuple[str, int], profiles.TxProfile] = {}
    energy = {k: 0.0 for k in keys}
    resent = changed_now = 0
    for _ in range(args.replans):
        site, slots, metas = live_inputs.build(state, now, settings, {})
        result = planner.solve(site, slots)
        starts = result.grid.starts()
        for i, meta in enumerate(metas):
            if meta.session is None:
                continue
            prof = profiles.build_profile(
                station_id=meta.key[0], evse_id=meta.key[1], transaction_id=meta.session.transaction_id,
                starts=starts, end=result.grid.end(), power_kw=result.power_kw[i], max_charge_kw=11.0,
                max_discharge_kw=0.0, bidirectional=False, dialect=DischargeDialect.NONE, stack_level=1,
                max_periods=settings.max_profile_periods)
            old = sent.get(meta.key)
            if profiles.differs(old, prof):
                resent += 1
                if old is not None and old.limit_at(now) != prof.limit_at(now):
                    changed_now += 1
                sent[meta.key] = prof
        # The EVs follow their profiles to the next re-plan, read once a minute.
        for m in range(int(STEP / timedelta(minutes=1))):
            t = now + timedelta(minutes=m)
            for k in keys:
                energy[k] += (sent[k].limit_at(t) or 0.0) / 1000.0 / 60.0
        now += STEP
        for i, k in enumerate(keys):
            kw = (sent[k].limit_at(now) or 0.0) / 1000.0
            state.apply(ev.SessionUpdated(now, k[0], 1, f"TX-{i}", energy_in_kwh=energy[k], power_kw=kw,
                                          charging_state="Charging"))
    print(json.dumps({"evs": args.evs, "replans": args.replans, "urgency_spread": problem.URGENCY_SPREAD,
                      "profiles_sent": resent, "limit_now_changed": changed_now,
                      "energy_kwh": {k[0]: round(v, 1) for k, v in energy.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
