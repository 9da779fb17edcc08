"""MQTT inputs are checked as strictly as the same inputs over REST: JSON types as they are (a
string is not a number or a bool, an int is a fine float), times as RFC 3339 strings, and the
grid-event rules REST applies (at most 31 days). A valid input the database could not store is
counted apart from bad messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.bus import inbound
from tests.api.conftest import OPERATOR, eventually
from tests.bus.conftest import apply_failed_count, connected_bridge, invalid_count, publish
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness

T0 = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)


def _z(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _event(**over: Any) -> dict[str, Any]:
    return {"id": "e1", "start": _z(T0), "end": _z(T0 + timedelta(hours=2)), "kind": "import_cap",
            "cap_kw": 50.0, **over}


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("grid_events", {"id": "e1", "cancel": "yes"}, "cancel"),
        ("grid_events", {"id": "e1", "cancel": 1}, "cancel"),
        ("grid_events", _event(cap_kw="42"), "cap_kw"),
        ("grid_events", _event(cap_kw=True), "cap_kw"),
        ("grid_events", _event(payment_per_kwh="0.4", kind="export_request"), "payment_per_kwh"),
        ("grid_events", _event(id=17), "id"),
        ("grid_events", _event(start=int(T0.timestamp())), "start"),
        ("grid_events", _event(start=str(int(T0.timestamp()))), "start"),
        ("building_load", {"power_kw": "42"}, "power_kw"),
        ("building_load", {"power_kw": True}, "power_kw"),
        ("building_load", {"power_kw": 1, "ts": 1_700_000_000}, "ts"),
        ("building_load", {"power_kw": 1, "forecast": [{"start": _z(T0), "power_kw": "3"}]}, "forecast.0.power_kw"),
        ("prices", {"prices": [{"start": _z(T0), "end": _z(T0 + timedelta(hours=1)),
                                "import_price_per_kwh": "0.3", "export_price_per_kwh": 0.1}]},
         "prices.0.import_price_per_kwh"),
    ],
)
def test_wrong_json_types_are_refused(name: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(inbound.Invalid) as exc:
        inbound.parse(name, json.dumps(body))
    assert str(exc.value).startswith(f"{field}:"), str(exc.value)


def test_ints_are_fine_floats_and_kinds_are_strings() -> None:
    load = inbound.parse("building_load", json.dumps({"power_kw": 42, "forecast": [{"start": _z(T0), "power_kw": 3}]}))
    assert isinstance(load, inbound.BuildingLoad) and load.power_kw == 42.0
    ev = inbound.parse("grid_events", json.dumps(_event(cap_kw=50)))
    assert isinstance(ev, inbound.GridEventMsg) and ev.cap_kw == 50.0 and ev.kind is not None
    cancel = inbound.parse("grid_events", json.dumps({"id": "e1", "cancel": True}))
    assert isinstance(cancel, inbound.GridEventMsg) and cancel.cancel


def test_grid_event_span_is_the_rest_rule() -> None:
    # The same rule as REST: 31 days exactly pass, a minute more does not.
    ok = _event(end=_z(T0 + timedelta(days=31)))
    assert isinstance(inbound.parse("grid_events", json.dumps(ok)), inbound.GridEventMsg)
    with pytest.raises(inbound.Invalid, match="at most 31 days"):
        inbound.parse("grid_events", json.dumps(_event(end=_z(T0 + timedelta(days=31, minutes=1)))))
    with pytest.raises(inbound.Invalid, match="at most 31 days"):
        inbound.parse("grid_events", json.dumps(_event(end=_z(T0 + timedelta(days=400)))))


def test_a_forecast_with_two_points_at_one_start_is_refused_as_rest_refuses_it() -> None:
    body = {"power_kw": 10, "forecast": [{"start": _z(T0), "power_kw": 3}, {"start": _z(T0), "power_kw": 4}]}
    with pytest.raises(inbound.Invalid, match="forecast starts must be distinct"):
        inbound.parse("building_load", json.dumps(body))


async def test_rest_and_mqtt_agree_on_the_grid_event_span(gateway_server: GatewayHarness) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.api_url, timeout=EVENT_TIMEOUT_S) as api:
        for days, hours in ((31, 23), (32, 0)):
            body = _event(id=f"span-{days}", end=_z(T0 + timedelta(days=days, hours=hours)))
            rest = await api.post("/api/v1/grid-events", headers=OPERATOR, json=body)
            try:
                inbound.parse("grid_events", json.dumps(body))
                mqtt_ok = True
            except inbound.Invalid:
                mqtt_ok = False
            assert (rest.status_code == 201) == mqtt_ok, (days, hours, rest.text)


async def test_strict_types_over_the_broker(gateway_factory: Any, mqtt_url: str, prefix: str) -> None:
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    gw = bridge.gw
    now = gw.clock.now()
    start, end = _z(now + timedelta(hours=1)), _z(now + timedelta(hours=2))
    await publish(mqtt_url, f"{prefix}/in/grid_events",
                  json.dumps({"id": "s1", "start": start, "end": end, "kind": "import_cap", "cap_kw": 30}))

    async def created() -> bool:
        return "s1" in gw.state.grid_events

    await eventually(created, "a valid grid event to be applied")
    before = bridge.invalid
    await publish(mqtt_url, f"{prefix}/in/grid_events", json.dumps({"id": "s1", "cancel": "yes"}))
    await publish(mqtt_url, f"{prefix}/in/building_load", json.dumps({"power_kw": "42"}))
    await publish(mqtt_url, f"{prefix}/in/building_load", json.dumps({"power_kw": True}))
    await publish(mqtt_url, f"{prefix}/in/grid_events",
                  json.dumps({"id": "s2", "start": start, "end": _z(now + timedelta(days=40)),
                              "kind": "import_cap", "cap_kw": 30}))
    await publish(mqtt_url, f"{prefix}/in/building_load", json.dumps({"power_kw": 42}))  # valid: an int

    async def last_applied() -> bool:
        return gw.state.building_load_kw == 42.0

    await eventually(last_applied, "the valid message after the bad ones")
    assert bridge.invalid == before + 4
    assert "s1" in gw.state.grid_events and "s2" not in gw.state.grid_events


async def test_a_failed_database_write_is_not_counted_as_a_bad_message(
    gateway_factory: Any, mqtt_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    gw = bridge.gw

    async def database_away(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("the database is away")

    monkeypatch.setattr(gw.planning, "upsert_grid_event", database_away)
    failed, invalid = apply_failed_count("grid_events"), invalid_count("grid_events")
    now = gw.clock.now()
    await publish(mqtt_url, f"{prefix}/in/grid_events",
                  json.dumps({"id": "db-1", "start": _z(now + timedelta(hours=1)),
                              "end": _z(now + timedelta(hours=2)), "kind": "import_cap", "cap_kw": 30.0}))

    async def counted() -> bool:
        return apply_failed_count("grid_events") > failed or invalid_count("grid_events") > invalid

    await eventually(counted, "the failed write to be counted")
    assert apply_failed_count("grid_events") == failed + 1
    assert invalid_count("grid_events") == invalid, "a database failure was counted as a bad message"
    assert "db-1" not in gw.state.grid_events


def test_overlapping_price_windows_are_refused() -> None:
    """The price in an overlap was left to the order of the windows inside the message."""
    def window(start_h: int, end_h: int, price: float) -> dict[str, Any]:
        return {"start": _z(T0 + timedelta(hours=start_h)), "end": _z(T0 + timedelta(hours=end_h)),
                "import_price_per_kwh": price, "export_price_per_kwh": 0.05}

    with pytest.raises(inbound.Invalid, match="overlap"):
        inbound.parse("prices", json.dumps({"prices": [window(0, 2, 0.5), window(0, 18, 0.1)]}))
    with pytest.raises(inbound.Invalid, match="overlap"):
        inbound.parse("prices", json.dumps({"prices": [window(3, 5, 0.5), window(1, 4, 0.1)]}))
    apart = inbound.parse("prices", json.dumps({"prices": [window(2, 4, 0.5), window(0, 2, 0.1)]}))
    assert isinstance(apart, inbound.Prices) and len(apart.prices) == 2  # touching is fine
