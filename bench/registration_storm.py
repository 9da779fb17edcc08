"""A bulk registration from another process (`gateway sim --register`, a provisioning script calling
`gateway station add`) while a gateway runs: each station's write sends a NOTIFY, and the gateway
reads each station again (gateway/db/station_changes.py). How long until the running gateway plans
with every new EVSE, and did any read fail (a warning) on the way?

    python bench/registration_storm.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test \
        --stations 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

from gateway.app import Gateway
from gateway.config import Settings
from gateway.db.admin import register_for_sim
from gateway.domain import EvseSpec
from gateway.episode import StationSpec

PASSWORD = "registration-storm-password"


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def run(n: int, database_url: str, limit_s: float) -> dict[str, object]:
    warnings = _Warnings()
    logging.getLogger().addHandler(warnings)
    gw = Gateway(Settings(database_url=database_url, ocpp_host="127.0.0.1", ocpp_port=0, api_host="127.0.0.1",
                          api_port=0, scheduler_enabled=False))
    await gw.start()
    try:
        await asyncio.wait_for(gw.station_changes.listening.wait(), 30)
        specs = [StationSpec(f"RS-{i:05d}", (EvseSpec(f"RS-{i:05d}", 1, max_charge_kw=22.0, max_discharge_kw=11.0,
                                                       bidirectional=True),)) for i in range(n)]
        t0 = time.perf_counter()
        await register_for_sim(database_url, specs, PASSWORD)  # one commit (and NOTIFY) per station
        written = time.perf_counter() - t0

        def adopted() -> int:
            return sum(1 for (sid, _), e in gw.state.evses.items() if sid.startswith("RS-")
                       and e.spec.max_charge_kw == 22.0)

        while adopted() < n:
            if time.perf_counter() - t0 > limit_s:
                raise SystemExit(f"only {adopted()}/{n} EVSEs in the live state after {limit_s:g} s")
            await asyncio.sleep(0.05)
        return {"stations": n, "written_s": round(written, 2), "all_adopted_s": round(time.perf_counter() - t0, 2),
                "notifications_heard": gw.station_changes.heard, "warnings": warnings.count}
    finally:
        await gw.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True, help="a server to create a scratch database on")
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--limit-s", type=float, default=300.0)
    args = ap.parse_args()
    with benchlib.fresh_database(args.database_url) as url:
        print(json.dumps(asyncio.run(run(args.stations, url, args.limit_s))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
