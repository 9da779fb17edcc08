"""The MQTT bridge against the real broker: what it publishes, and inputs it applies."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import asyncpg

from gateway import events as ev
from gateway import metrics
from gateway.clock import to_rfc3339
from gateway.domain import GridEventKind
from tests.api.conftest import PluggedStation, plug_in
from tests.bus.conftest import connected_bridge, publish, recording
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness


async def _answer(st: PluggedStation) -> None:
    while True:
        call = await st.ws.incoming_calls.get()
        await st.ws.answer(call, {"status": "Accepted"})


async def test_published_topics_reach_a_subscriber(gateway_factory: Any, mqtt_url: str, prefix: str) -> None:
    h: GatewayHarness = await gateway_factory(
        mqtt_url=mqtt_url, mqtt_topic_prefix=prefix, scheduler_enabled=True, replan_debounce_s=0.2
    )
    await connected_bridge(h)
    assert metrics.REGISTRY.get_sample_value("gateway_mqtt_connected") == 1.0
    async with recording(mqtt_url, prefix) as rec:
        st = await plug_in(h, "CS-MQ1", "tx-mq1", "TOKEN-MQ1")
        answering = asyncio.create_task(_answer(st))
        await st.ws.ok(
            "StatusNotification",
            {"timestamp": st.ts(), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
        )
        await st.tx_event("Updated", "tx-mq1", energy_wh=1500.0, power_w=7400.0, offset_s=30)

        status = await rec.wait_for(f"{prefix}/stations/CS-MQ1/status", connected=True)
        assert status["ts"].endswith("Z")
        assert (await rec.wait_for(f"{prefix}/stations/CS-MQ1/evses/1/status"))["status"] == "Occupied"
        started = await rec.wait_for(f"{prefix}/sessions/tx-mq1/started")
        assert started == {
            "transaction_id": "tx-mq1",
            "station_id": "CS-MQ1",
            "evse_id": 1,
            "ts": started["ts"],
        }
        meter = await rec.wait_for(f"{prefix}/stations/CS-MQ1/evses/1/meter", energy_in_kwh=1.5)
        assert meter["power_kw"] == 7.4 and meter["transaction_id"] == "tx-mq1"
        power = await rec.wait_for(f"{prefix}/site/power", ev_power_kw=7.4)
        assert power["power_kw"] == 7.4 and power["building_load_kw"] == 0.0
        plan = await rec.wait_for(f"{prefix}/plans/latest")
        assert plan["plan_id"] is not None and plan["created_at"].endswith("Z")
        assert {s["transaction_id"] for s in plan["sessions"]} <= {"tx-mq1"}

        await st.tx_event("Ended", "tx-mq1", energy_wh=2000.0, trigger="EVCommunicationLost", offset_s=60)
        ended = await rec.wait_for(f"{prefix}/sessions/tx-mq1/ended")
        assert ended["reason"] == "EVDisconnected"
        await st.ws.close()
        assert (await rec.wait_for(f"{prefix}/stations/CS-MQ1/status", connected=False))[
            "station_id"
        ] == "CS-MQ1"
        answering.cancel()
    # The id token identifies a person and never goes out on the bus.
    assert all("TOKEN-MQ1" not in json.dumps(p) for _, p, _ in rec.messages)


async def test_inputs_update_state_and_trigger_replans(
    gateway_factory: Any,
    mqtt_url: str,
    prefix: str,
    database_url: str,
) -> None:
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    gw = bridge.gw
    changes = gw.bus.subscribe(ev.SiteInputsChanged)

    async def next_change() -> str:
        e = await asyncio.wait_for(changes.get(), EVENT_TIMEOUT_S)
        assert isinstance(e, ev.SiteInputsChanged)
        return e.what

    now = gw.clock.now()
    start, end = to_rfc3339(now + timedelta(hours=1)), to_rfc3339(now + timedelta(hours=2))
    await publish(
        mqtt_url,
        f"{prefix}/in/grid_events",
        json.dumps({"id": "flex-1", "start": start, "end": end, "kind": "import_cap", "cap_kw": 80.0}),
    )
    assert await next_change() == "grid_events"
    assert gw.state.grid_events["flex-1"].kind == GridEventKind.IMPORT_CAP
    assert gw.state.grid_events["flex-1"].cap_kw == 80.0

    await publish(
        mqtt_url,
        f"{prefix}/in/prices",
        json.dumps(
            {
                "prices": [
                    {"start": start, "end": end, "import_price_per_kwh": 0.55, "export_price_per_kwh": 0.2}
                ]
            }
        ),
    )
    assert await next_change() == "prices"
    ((lo, hi, imp, exp),) = gw.state.price_overrides
    assert (to_rfc3339(lo), to_rfc3339(hi), imp, exp) == (start, end, 0.55, 0.2)

    await publish(
        mqtt_url,
        f"{prefix}/in/building_load",
        json.dumps({"power_kw": 33.0, "forecast": [{"start": start, "power_kw": 50.0}]}),
    )
    assert await next_change() == "building_load"
    assert gw.state.building_load_kw == 33.0 and gw.state.building_load_forecast[0][1] == 50.0

    # Bad input is refused, logged and counted; the bridge keeps going.
    refused_before = bridge.invalid
    await publish(mqtt_url, f"{prefix}/in/prices", b"\xff not json")
    await publish(mqtt_url, f"{prefix}/in/building_load", json.dumps({"power_kw": "lots"}))
    await publish(
        mqtt_url,
        f"{prefix}/in/grid_events",
        json.dumps({"id": "x", "start": end, "end": start, "kind": "import_cap", "cap_kw": 1}),
    )
    await publish(mqtt_url, f"{prefix}/in/grid_events", json.dumps({"id": "flex-1", "cancel": True}))
    assert await next_change() == "grid_events"  # the valid one after three bad ones
    assert bridge.invalid == refused_before + 3
    assert "flex-1" not in gw.state.grid_events and bridge.connected
    assert (metrics.REGISTRY.get_sample_value("gateway_mqtt_invalid_total", {"input": "prices"}) or 0) >= 1

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        grid = await conn.fetchrow("SELECT source, cancelled_at FROM grid_events WHERE id = 'flex-1'")
        tariff = await conn.fetchrow("SELECT source, periods FROM tariffs ORDER BY id DESC LIMIT 1")
        load = await conn.fetchrow("SELECT value, updated_by FROM site_settings WHERE key = 'building_load'")
    finally:
        await conn.close()
    assert grid["source"] == "mqtt" and grid["cancelled_at"] is not None
    assert (
        tariff["source"] == "mqtt"
        and json.loads(tariff["periods"])["overrides"][0]["import_price_per_kwh"] == 0.55
    )
    assert json.loads(load["value"])["power_kw"] == 33.0 and load["updated_by"] == "mqtt"
    changes.close()


def test_a_topic_level_holds_no_wildcard_separator_or_control_character() -> None:
    from gateway.bus.topics import segment

    assert segment("tx-1") == "tx-1" and segment("äöü 中") == "äöü 中"
    escaped = {"a/b": "a%2Fb", "a+b": "a%2Bb", "a#b": "a%23b", "a\x01b": "a%01b", "a\nb": "a%0Ab",
               "a\x85b": "a%C2%85b", "a\uffffb": "a%EF%BF%BFb", "a\u2028b": "a%E2%80%A8b", "a%b": "a%25b"}
    for raw, want in escaped.items():
        assert segment(raw) == want, raw
    assert segment("") == "%"
    # Ids that differ get topics that differ (a shared one let stations overwrite each other's
    # retained status): "_" stands for itself.
    ids = ["CP#1", "CP+1", "CP_1", "CP%231", "CP/1", "", "%", "_"]
    assert len({segment(i) for i in ids}) == len(ids)


async def test_a_transaction_id_with_a_control_character_does_not_stop_publishing(
        gateway_factory: Any, mqtt_url: str, prefix: str) -> None:
    """Schema-valid OCPP (only NUL and lone surrogates are refused), but a topic holding U+0001
    makes the broker drop the publisher; it was resent first after every reconnect, for good."""
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    await connected_bridge(h)
    async with recording(mqtt_url, prefix) as rec:
        st = await plug_in(h, "CS-MQC", "tx\x01c", "TOKEN-MQC")
        started = await rec.wait_for(f"{prefix}/sessions/tx%01c/started")
        assert started["transaction_id"] == "tx\x01c"
        await st.ws.ok("StatusNotification",
                       {"timestamp": st.ts(), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1})
        assert (await rec.wait_for(f"{prefix}/stations/CS-MQC/evses/1/status"))["status"] == "Occupied"
        await st.ws.close()


async def test_the_gateway_says_it_is_online_and_a_clean_stop_publishes_what_is_pending(
    gateway_factory: Any, mqtt_url: str, prefix: str
) -> None:
    """A stop closes the stations first; their disconnects are published before the bridge goes,
    so no station is left retained as connected, and the gateway's own status says it stopped."""
    async with recording(mqtt_url, prefix) as rec:
        h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
        await connected_bridge(h)
        online = await rec.wait_for(f"{prefix}/gateway/status", online=True)
        assert online["reason"] == "connected" and online["ts"].endswith("Z")
        st = await plug_in(h, "CS-MQ9", "tx-mq9", "TOKEN-MQ9")
        await rec.wait_for(f"{prefix}/stations/CS-MQ9/status", connected=True)

        await h.stop()
        await rec.wait_for(f"{prefix}/stations/CS-MQ9/status", connected=False)
        gone = await rec.wait_for(f"{prefix}/gateway/status", online=False)
        assert gone["reason"] == "stopped"
        order = [(t, p) for t, p, _ in rec.messages]
        went = order.index((f"{prefix}/stations/CS-MQ9/status",
                            next(p for t, p in order if t.endswith("CS-MQ9/status") and not p["connected"])))
        assert order.index((f"{prefix}/gateway/status", gone)) > went  # the goodbye is the last word
        await st.ws.close()
        await h.start()  # as the fixture expects to find it
