"""The scheduler's plans and the profiles it sent, through the REST API, on a real gateway."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import inspect

from gateway.db.queries import Queries
from tests.api.conftest import OPERATOR
from tests.conftest import EVENT_TIMEOUT_S
from tests.gateway.test_handlers import wait_for
from tests.gateway.test_mpc_live import planned_plug_in


async def test_plans_and_the_profiles_each_sent_are_listed_newest_first(gateway_factory: Any) -> None:
    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0)
    sched = h.gw.scheduler
    assert sched is not None
    st, _ = await planned_plug_in(h, "CS-P", "TX-P")

    async def stored() -> bool:  # a plan is stored after its push (and a profile may be the default)
        return sched.latest is not None and sched.latest.plan_id is not None

    await wait_for(stored)
    first = sched.latest
    assert first is not None and first.plan_id is not None

    async def recorded() -> bool:  # profile records are written after the push
        rows, _ = await Queries(h.gw.sessions).profiles_sent(
            station_id=None, transaction_id=None, plan_id=first.plan_id, limit=10, offset=0)
        return len(rows) >= 1

    await wait_for(recorded)
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        listed = (await api.get("/api/v1/plans", headers=OPERATOR, params={"limit": 5})).json()
        assert listed["total"] >= 1 and listed["items"][0]["id"] >= first.plan_id
        assert "sessions" not in listed["items"][0]  # a summary
        full = (await api.get(f"/api/v1/plans/{first.plan_id}", headers=OPERATOR)).json()
        assert full["id"] == first.plan_id and full["sessions"]
        latest = await api.get("/api/v1/plans/latest", headers=OPERATOR)
        assert latest.status_code == 200 and latest.json()["id"] >= first.plan_id
        assert (await api.get("/api/v1/plans/999999", headers=OPERATOR)).status_code == 404
        sent = (await api.get("/api/v1/profiles-sent", headers=OPERATOR,
                              params={"plan_id": first.plan_id})).json()
        assert sent["total"] >= 1
        item = sent["items"][0]
        assert (item["plan_id"], item["station_id"], item["transaction_id"]) == (first.plan_id, "CS-P", "TX-P")
        assert item["payload"]["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"
        assert item["status"] == "Accepted"
        other = (await api.get("/api/v1/profiles-sent", headers=OPERATOR, params={"station_id": "CS-NONE"})).json()
        assert other["total"] == 0 and other["items"] == []
    # The list reads no plan's per-session powers (megabytes per plan at fleet scale).
    rows, _ = await Queries(h.gw.sessions).plans(5, 0)
    assert rows and {"sessions", "terms", "inputs_hash"} <= set(inspect(rows[0]).unloaded)
    await st.close()
