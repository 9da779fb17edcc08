"""The bridge survives what it was not built for: a payload that breaks the JSON parser, a bug
while parsing, any unexpected error in its connection loop. Each is logged and counted and the
bridge carries on; only cancellation (the gateway stopping) ends it."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiomqtt
import pytest

from gateway import metrics
from gateway.bus import inbound
from tests.api.conftest import eventually
from tests.bus.conftest import connected_bridge, invalid_count, publish
from tests.conftest import GatewayHarness


async def _bridge(gateway_factory: Any, mqtt_url: str, prefix: str) -> Any:
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    return await connected_bridge(h)


def test_deep_nesting_is_invalid_not_a_crash() -> None:
    with pytest.raises(inbound.Invalid, match="nested too deeply"):
        inbound.parse("prices", "[" * 100_000)
    with pytest.raises(inbound.Invalid, match="nested too deeply"):
        inbound.parse("building_load", b'{"power_kw": ' + b"[" * 100_000)


async def test_deeply_nested_payload_is_refused_and_the_bridge_carries_on(
    gateway_factory: Any, mqtt_url: str, prefix: str
) -> None:
    bridge = await _bridge(gateway_factory, mqtt_url, prefix)
    conn_task = next(t for t in bridge._tasks if t.get_name() == "mqtt-connection")
    invalid_before, counted_before = bridge.invalid, invalid_count("prices")

    await publish(mqtt_url, f"{prefix}/in/prices", "[" * 100_000)

    async def refused_or_dead() -> bool:
        return bool(bridge.invalid > invalid_before or conn_task.done())

    await eventually(refused_or_dead, "the deep payload to be refused")
    assert not conn_task.done(), "the connection task died on a deeply nested payload"
    assert bridge.invalid == invalid_before + 1 and invalid_count("prices") == counted_before + 1
    assert bridge.connected and bridge.connects == 1

    # Still serving: the next input is applied.
    await publish(mqtt_url, f"{prefix}/in/building_load", json.dumps({"power_kw": 17.0}))

    async def applied() -> bool:
        return bool(bridge.gw.state.building_load_kw == 17.0)

    await eventually(applied, "the next input to be applied")


async def test_an_unexpected_error_while_parsing_refuses_the_message(
    gateway_factory: Any, mqtt_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await _bridge(gateway_factory, mqtt_url, prefix)

    def broken(name: str, payload: Any) -> Any:
        raise TypeError("a parser bug")

    monkeypatch.setattr(inbound, "parse", broken)
    before, counted_before = bridge.invalid, invalid_count("prices")
    with caplog.at_level(logging.WARNING, logger="gateway.bus.mqtt"):
        assert await bridge.handle_input(f"{prefix}/in/prices", b"{}") is False
    assert bridge.invalid == before + 1 and invalid_count("prices") == counted_before + 1
    assert any(r.exc_info and "a parser bug" in str(r.exc_info[1]) for r in caplog.records)


async def test_a_cleared_retained_message_is_nothing_to_apply(
    gateway_factory: Any, mqtt_url: str, prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """An empty payload is how MQTT clears a topic's retained message, and subscribers get it
    too: an energy system withdrawing its retained state sent nothing wrong."""
    bridge = await _bridge(gateway_factory, mqtt_url, prefix)
    before, counted_before = bridge.invalid, invalid_count("building_load")
    with caplog.at_level(logging.WARNING, logger="gateway.bus.mqtt"):
        assert await bridge.handle_input(f"{prefix}/in/building_load", b"") is False
    assert bridge.invalid == before and invalid_count("building_load") == counted_before
    assert bridge.apply_failed == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_connection_loop_survives_an_unexpected_error_and_stops_on_cancel(
    gateway_factory: Any, mqtt_url: str, prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await _bridge(gateway_factory, mqtt_url, prefix)
    conn_task = next(t for t in bridge._tasks if t.get_name() == "mqtt-connection")
    real_receive = bridge._receive
    failures = 0

    async def receive_failing_once(client: aiomqtt.Client) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("something nobody expected")
        await real_receive(client)

    bridge._receive = receive_failing_once
    caplog.set_level(logging.ERROR, logger="gateway.bus.mqtt")
    # Force a reconnect so the patched receive runs: the broker drops a client whose identifier
    # another client takes over.
    host, port = bridge.host, bridge.port
    async with aiomqtt.Client(host, port, identifier=bridge._client_id):
        pass

    async def reconnected_or_dead() -> bool:
        return bool((bridge.connects >= 3 and bridge.connected) or conn_task.done())

    await eventually(reconnected_or_dead, "the bridge to reconnect after the unexpected error")
    assert not conn_task.done(), "the connection task died on an unexpected error"
    assert failures == 1
    assert any(r.levelno >= logging.ERROR and r.exc_info and "something nobody expected" in str(r.exc_info[1])
               for r in caplog.records), "the unexpected error was not logged"

    # Still serving after it.
    await publish(mqtt_url, f"{prefix}/in/building_load", json.dumps({"power_kw": 23.0}))

    async def applied() -> bool:
        return bool(bridge.gw.state.building_load_kw == 23.0)

    await eventually(applied, "an input after the reconnect to be applied")

    # Cancellation still ends it (the gateway's shutdown).
    await bridge.stop()
    assert conn_task.done() and conn_task.cancelled()
    assert not bridge.connected


async def test_a_payload_larger_than_the_packet_limit_never_reaches_the_gateway(
        gateway_factory: Any, mqtt_url: str, prefix: str) -> None:
    """Read whole into memory before the 1-MB check, a 200-MB payload (under many brokers' own
    limit) cost that much memory: the bridge tells the broker the largest packet it takes."""
    from gateway.bus.mqtt import MAX_PACKET_BYTES

    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    before = bridge.invalid
    await publish(mqtt_url, f"{prefix}/in/prices", "x" * (MAX_PACKET_BYTES + 1))
    await publish(mqtt_url, f"{prefix}/in/prices", "x" * 1_500_000)  # over the payload limit, under the packet's
    await publish(mqtt_url, f"{prefix}/in/prices", json.dumps({"prices": []}))  # then one to apply

    async def applied() -> bool:
        return bool(bridge.invalid > before and metrics_received() > received)

    def metrics_received() -> float:
        return float(metrics.MQTT_RECEIVED.labels("prices")._value.get())  # type: ignore[attr-defined]

    received = metrics_received()
    await eventually(applied, "the 1.5-MB payload to be refused and the next message applied")
    assert bridge.invalid == before + 1  # the larger one was never delivered
