"""Retained inputs come back on every (re)connect, and a gateway restart brings them all back.
A replay must not undo what happened since: a cancelled grid event stays cancelled (its id is
final, over MQTT and REST alike), and a building load older than the one applied last is stale."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg
import httpx

from gateway.clock import parse_rfc3339, to_rfc3339
from tests.api.conftest import OPERATOR, eventually
from tests.bus.conftest import connected_bridge, invalid_count, publish, retained_cleared
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness


async def _fetchrow(database_url: str, sql: str) -> Any:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await conn.fetchrow(sql)
    finally:
        await conn.close()


async def _bridged_with_a_cap(gateway_factory: Any, mqtt_url: str, prefix: str,
                              event_id: str) -> tuple[GatewayHarness, Any, dict[str, Any]]:
    """A gateway whose bridge is connected, and a 60-kW import cap starting in an hour to send it."""
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    assert h.gw is not None
    now = h.gw.clock.now()
    event = {"id": event_id, "start": to_rfc3339(now + timedelta(hours=1)),
             "end": to_rfc3339(now + timedelta(hours=2)), "kind": "import_cap", "cap_kw": 60.0}
    return h, bridge, event


async def test_a_cancelled_grid_event_stays_cancelled(
    gateway_factory: Any, mqtt_url: str, prefix: str, database_url: str
) -> None:
    topic = f"{prefix}/in/grid_events"
    h, bridge, event = await _bridged_with_a_cap(gateway_factory, mqtt_url, prefix, "dso-7")
    async with retained_cleared(mqtt_url, topic), \
            httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        await publish(mqtt_url, topic, json.dumps(event), retain=True)

        async def created() -> bool:
            return "dso-7" in h.gw.state.grid_events  # type: ignore[union-attr]

        await eventually(created, "the retained grid event to be applied")
        assert (await api.delete("/api/v1/grid-events/dso-7", headers=OPERATOR)).status_code == 200
        assert "dso-7" not in h.gw.state.grid_events

        # A restart: the new bridge subscribes and the broker replays the retained create.
        await h.restart()
        bridge = await connected_bridge(h)

        async def replay_seen() -> bool:
            return bool(bridge.replayed >= 1 or "dso-7" in h.gw.state.grid_events)  # type: ignore[union-attr]

        await eventually(replay_seen, "the retained create to be replayed")
        assert "dso-7" not in h.gw.state.grid_events, "the replay un-cancelled the grid event"
        assert bridge.replayed == 1 and bridge.invalid == 0
        row = await _fetchrow(database_url, "SELECT cancelled_at, cap_kw FROM grid_events WHERE id = 'dso-7'")
        assert row["cancelled_at"] is not None and row["cap_kw"] == 60.0

        # A live MQTT update of the cancelled id is refused too, with a reason, and counted.
        before, counted = bridge.invalid, invalid_count("grid_events")
        await publish(mqtt_url, topic, json.dumps({**event, "cap_kw": 10.0}))

        async def refused() -> bool:
            return bool(bridge.invalid > before or "dso-7" in h.gw.state.grid_events)  # type: ignore[union-attr]

        await eventually(refused, "the update of a cancelled grid event to be handled")
        assert "dso-7" not in h.gw.state.grid_events
        assert invalid_count("grid_events") == counted + 1

        # REST says so with a 409 in the API's error shape, and changes nothing.
        again = await api.post("/api/v1/grid-events", headers=OPERATOR, json={**event, "cap_kw": 5.0})
        assert again.status_code == 409, again.text
        error = again.json()["error"]
        assert error["code"] == "conflict" and "cancelled" in error["message"]
        assert error["details"]["id"] == "dso-7"
        row = await _fetchrow(database_url, "SELECT cancelled_at, cap_kw FROM grid_events WHERE id = 'dso-7'")
        assert row["cancelled_at"] is not None and row["cap_kw"] == 60.0
        assert "dso-7" not in h.gw.state.grid_events

        # A new id is what a re-issued event needs, and it works.
        fresh = await api.post("/api/v1/grid-events", headers=OPERATOR, json={**event, "id": "dso-7b"})
        assert fresh.status_code == 201, fresh.text


async def test_a_stale_building_load_does_not_override_a_newer_one(
    gateway_factory: Any, mqtt_url: str, prefix: str, database_url: str
) -> None:
    topic = f"{prefix}/in/building_load"
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    assert h.gw is not None
    old_ts = h.gw.clock.now() - timedelta(minutes=10)
    async with retained_cleared(mqtt_url, topic), \
            httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        await publish(mqtt_url, topic, json.dumps({"power_kw": 11.0, "ts": to_rfc3339(old_ts)}), retain=True)

        async def first_applied() -> bool:
            return h.gw.state.building_load_kw == 11.0  # type: ignore[union-attr]

        await eventually(first_applied, "the retained building load to be applied")
        put = await api.put("/api/v1/site/building-load", headers=OPERATOR, json={"power_kw": 22.0})
        assert put.status_code == 200, put.text

        await h.restart()
        bridge = await connected_bridge(h)

        async def replay_seen() -> bool:
            return bool(bridge.replayed >= 1 or h.gw.state.building_load_kw != 22.0)  # type: ignore[union-attr]

        await eventually(replay_seen, "the retained building load to be replayed")
        assert h.gw.state.building_load_kw == 22.0, "an old retained reading overrode a newer PUT"
        assert bridge.replayed == 1 and bridge.invalid == 0
        # What made it stale survived the restart: the PUT's application time, stored with it.
        stored = await _fetchrow(database_url, "SELECT value FROM site_settings WHERE key = 'building_load'")
        assert json.loads(stored["value"])["power_kw"] == 22.0
        assert parse_rfc3339(json.loads(stored["value"])["at"]) > old_ts

        # A reading newer than the PUT applies; one older than that reading is stale.
        newer = h.gw.clock.now()
        before = bridge.invalid
        await publish(mqtt_url, topic, json.dumps({"power_kw": 33.0, "ts": to_rfc3339(newer)}))

        async def newer_applied() -> bool:
            return h.gw.state.building_load_kw == 33.0  # type: ignore[union-attr]

        await eventually(newer_applied, "a newer reading to be applied")
        counted = invalid_count("building_load")
        await publish(mqtt_url, topic, json.dumps({"power_kw": 44.0,
                                                   "ts": to_rfc3339(newer - timedelta(seconds=1))}))

        async def stale_refused() -> bool:
            return bool(bridge.invalid > before or h.gw.state.building_load_kw != 33.0)  # type: ignore[union-attr]

        await eventually(stale_refused, "the stale reading to be handled")
        assert h.gw.state.building_load_kw == 33.0 and invalid_count("building_load") == counted + 1

        # A reading without ts is "now": applied.
        await publish(mqtt_url, topic, json.dumps({"power_kw": 55.0}))

        async def now_applied() -> bool:
            return h.gw.state.building_load_kw == 55.0  # type: ignore[union-attr]

        await eventually(now_applied, "a reading without ts to be applied")

        # A ts far ahead of the gateway's clock would make every later reading stale: refused.
        before = bridge.invalid
        await publish(mqtt_url, topic, json.dumps({"power_kw": 66.0,
                                                   "ts": to_rfc3339(newer + timedelta(days=365))}))

        async def future_handled() -> bool:
            return bool(bridge.invalid > before or h.gw.state.building_load_kw != 55.0)  # type: ignore[union-attr]

        await eventually(future_handled, "a reading from the future to be handled")
        assert h.gw.state.building_load_kw == 55.0


def _replayed_at_least(bridge: Any, n: int) -> Any:
    async def replayed() -> bool:
        return bool(bridge.replayed >= n)
    return replayed


async def test_a_replayed_message_does_not_undo_a_newer_rest_change(
    gateway_factory: Any, mqtt_url: str, prefix: str, database_url: str
) -> None:
    """The broker replays a topic's retained message on every new subscription. If that message
    is the one the gateway applied last from the topic, a REST change made since (here: an update
    of the same grid event, and a building load, whose MQTT reading had no ``ts``) must stand."""
    events, loads = f"{prefix}/in/grid_events", f"{prefix}/in/building_load"
    h, bridge, event = await _bridged_with_a_cap(gateway_factory, mqtt_url, prefix, "dso-8")
    async with retained_cleared(mqtt_url, events, loads), \
            httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        await publish(mqtt_url, events, json.dumps(event), retain=True)
        await publish(mqtt_url, loads, json.dumps({"power_kw": 11.0}), retain=True)

        async def both_applied() -> bool:
            gw = h.gw
            assert gw is not None
            return "dso-8" in gw.state.grid_events and gw.state.building_load_kw == 11.0

        await eventually(both_applied, "the retained inputs to be applied")
        updated = await api.post("/api/v1/grid-events", headers=OPERATOR, json={**event, "cap_kw": 30.0})
        assert updated.status_code == 201, updated.text
        put = await api.put("/api/v1/site/building-load", headers=OPERATOR, json={"power_kw": 22.0})
        assert put.status_code == 200, put.text

        await h.restart()
        bridge = await connected_bridge(h)

        async def replays_seen() -> bool:
            return bridge.replayed >= 2 or bridge.invalid > 0 or bridge.apply_failed > 0

        await eventually(replays_seen, "both retained messages to be replayed")
        assert bridge.replayed == 2 and bridge.invalid == 0 and bridge.apply_failed == 0
        assert h.gw.state.grid_events["dso-8"].cap_kw == 30.0, "the replay undid the REST update"
        assert h.gw.state.building_load_kw == 22.0, "the replay undid the REST PUT"
        row = await _fetchrow(database_url, "SELECT cap_kw, source FROM grid_events WHERE id = 'dso-8'")
        assert row["cap_kw"] == 30.0 and row["source"] == "rest"

        # A retained message the gateway never applied (published while it was away) is applied.
        ports = {"ocpp_port": h.gw.ocpp_port, "api_port": h.gw.api_port}  # the API client's port
        await h.stop()
        await publish(mqtt_url, events, json.dumps({**event, "cap_kw": 45.0}), retain=True)
        h.settings = h.settings.model_copy(update=ports)
        await h.start()
        bridge = await connected_bridge(h)

        async def new_one_applied() -> bool:
            gw = h.gw
            assert gw is not None
            return "dso-8" in gw.state.grid_events and gw.state.grid_events["dso-8"].cap_kw == 45.0

        await eventually(new_one_applied, "the retained message published while away to be applied")
        await eventually(_replayed_at_least(bridge, 1), "the building load's retained message to be replayed")
        assert h.gw.state.building_load_kw == 22.0  # that one was applied before: skipped again

        # A live message is applied even when it repeats the last one: only replays are skipped.
        again = await api.post("/api/v1/grid-events", headers=OPERATOR, json={**event, "cap_kw": 35.0})
        assert again.status_code == 201, again.text
        await publish(mqtt_url, events, json.dumps({**event, "cap_kw": 45.0}))

        async def repeat_applied() -> bool:
            gw = h.gw
            assert gw is not None
            return gw.state.grid_events["dso-8"].cap_kw == 45.0

        await eventually(repeat_applied, "a live repeat of the last message to be applied")


async def test_a_retained_message_followed_by_live_ones_does_not_come_back_over_them(
    gateway_factory: Any, mqtt_url: str, prefix: str
) -> None:
    """Prices published retained, then new prices not retained: the broker keeps the first as
    the topic's retained copy. Only the last digest was remembered, so a restart applied the
    old prices again over the new ones."""
    topic = f"{prefix}/in/prices"
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    assert h.gw is not None
    now = h.gw.clock.now()
    start, end = to_rfc3339(now + timedelta(hours=1)), to_rfc3339(now + timedelta(hours=2))

    def prices(price: float) -> str:
        return json.dumps({"prices": [{"start": start, "end": end, "import_price_per_kwh": price,
                                       "export_price_per_kwh": 0.05}]})

    def price_now() -> float | None:
        assert h.gw is not None
        overrides = list(h.gw.state.price_overrides)
        return overrides[0][2] if overrides else None

    async with retained_cleared(mqtt_url, topic):
        await publish(mqtt_url, topic, prices(0.10), retain=True)
        await eventually(lambda: _true(price_now() == 0.10), "the retained prices to be applied")
        await publish(mqtt_url, topic, prices(0.50))
        await eventually(lambda: _true(price_now() == 0.50), "the live prices to be applied")

        await h.restart()
        bridge = await connected_bridge(h)
        await eventually(lambda: _true(bridge.replayed >= 1 or price_now() != 0.50),
                         "the retained prices to be replayed")
        assert price_now() == 0.50, "the old retained prices came back over the newer ones"
        assert bridge.replayed == 1


async def _true(value: bool) -> bool:
    return value
