"""/metrics shows the gateway's own figures, current at scrape time."""

from __future__ import annotations

import httpx

from tests.api.conftest import plug_in
from tests.conftest import GatewayHarness


async def test_metrics_cover_ocpp_db_scheduler_and_mqtt(gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    st = await plug_in(gateway_server, "CS-MET", "tx-met", "TOKEN-MET")
    r = await api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "gateway_stations_connected 1.0" in text
    assert 'gateway_ocpp_messages_total{action="TransactionEvent",outcome="ok"}' in text
    assert 'gateway_db_write_seconds_count{kind="transaction_event"}' in text
    for name in (
        "gateway_ocpp_call_seconds",
        "gateway_db_buffered_rows",
        "gateway_scheduler_solve_seconds",
        "gateway_scheduler_solves_total",
        "gateway_profiles_total",
        "gateway_mqtt_connected",
        "gateway_mqtt_buffered_messages",
        "gateway_mqtt_dropped_total",
        "gateway_event_queue_depth",
    ):
        assert f"# TYPE {name}" in text, name
    await st.ws.close()
