"""docs/reliability.md M2: the broker goes away. OCPP carries on, the bridge buffers to its bound and
counts what it drops, and reconnects by itself when the broker is back; the newest messages
(here: the station's last status) are delivered then."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway import metrics
from gateway.bus import topics
from gateway.bus.mqtt import HEAD_ATTEMPTS_MAX
from tests.api.conftest import eventually, plug_in
from tests.bus.conftest import (
    HAVE_MOSQUITTO,
    Mosquitto,
    bridge_down,
    bridge_up,
    connected_bridge,
    free_port,
    recording,
)
from tests.conftest import GatewayHarness

BUFFER_MAX = 5


def _dropped() -> float:
    return metrics.REGISTRY.get_sample_value("gateway_mqtt_dropped_total") or 0.0


async def test_broker_outage_buffers_drops_and_reconnects(
    gateway_factory: Any, private_broker: Mosquitto, prefix: str
) -> None:
    await private_broker.start()
    h: GatewayHarness = await gateway_factory(
        mqtt_url=private_broker.url, mqtt_topic_prefix=prefix, mqtt_buffer_messages_max=BUFFER_MAX
    )
    assert h.gw is not None and h.gw.mqtt is not None
    bridge = h.gw.mqtt
    assert bridge.buffer_max == BUFFER_MAX

    await bridge_up(bridge)
    connects = bridge.connects

    await private_broker.kill()
    await bridge_down(bridge)
    assert metrics.REGISTRY.get_sample_value("gateway_mqtt_connected") == 0.0

    # The OCPP path is unaffected: every CALL is answered at once while MQTT is down.
    dropped_before = _dropped()
    st = await plug_in(h, "CS-OUT", "tx-out", "TOKEN-OUT")
    started = time.perf_counter()
    for i in range(1, 11):
        await st.tx_event("Updated", "tx-out", energy_wh=100.0 * i, power_w=5000.0, offset_s=i)
    await st.ws.ok(
        "StatusNotification",
        {"timestamp": st.ts(20), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
    )
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"11 OCPP round trips took {elapsed:.1f} s during the MQTT outage"

    async def full() -> bool:
        return bool(bridge.buffered == BUFFER_MAX and _dropped() > dropped_before)

    await eventually(full, "the buffer to fill to its bound and drop the oldest")
    assert metrics.REGISTRY.get_sample_value("gateway_mqtt_buffered_messages") == BUFFER_MAX
    assert bridge.dropped >= 10  # 20+ messages (meter + site power per update) into 5 places

    await private_broker.start()  # same port
    await bridge_up(bridge)  # by itself
    assert bridge.connects == connects + 1

    async def drained() -> bool:
        return bool(bridge.buffered == 0)

    await eventually(drained, "the buffer to drain")
    async with recording(private_broker.url, prefix) as rec:
        # Retained, so it is there for a subscriber that arrives after the flush.
        status = await rec.wait_for(f"{prefix}/stations/CS-OUT/evses/1/status")
        assert status["status"] == "Occupied"
        # And the bridge publishes live again.
        await st.tx_event("Updated", "tx-out", energy_wh=5000.0, power_w=6000.0, offset_s=30)
        live = await rec.wait_for(f"{prefix}/stations/CS-OUT/evses/1/meter", energy_in_kwh=5.0)
        assert live["power_kw"] == 6.0
    await st.ws.close()


async def test_a_full_buffer_keeps_each_retained_topics_newest_value(gateway_factory: Any, prefix: str) -> None:
    """Full, the buffer drops the oldest message that is not a retained topic's newest pending
    value: a station's last status outlives an outage full of meter readings."""
    h: GatewayHarness = await gateway_factory(mqtt_url="mqtt://127.0.0.1:1", mqtt_topic_prefix=prefix,
                                              mqtt_buffer_messages_max=3)
    assert h.gw is not None and h.gw.mqtt is not None
    bridge = h.gw.mqtt
    while bridge.buffered:  # what start-up queued (nothing reaches a broker on port 1)
        bridge._buf.popleft()
    bridge._retained_pending.clear()

    def msg(topic: str, retain: bool) -> topics.Outgoing:
        return topics.Outgoing(f"{prefix}/{topic}", b"{}", 1, retain)

    bridge.enqueue(msg("status-a", True))
    bridge.enqueue(msg("status-a", True))  # supersedes the first
    bridge.enqueue(msg("status-b", True))
    bridge.enqueue(msg("meter", False))  # full: the superseded status-a goes
    assert [(m.topic.split("/")[-1]) for m in bridge._buf] == ["status-a", "status-b", "meter"]
    bridge.enqueue(msg("meter", False))  # full: the older meter reading goes, both statuses stay
    assert [(m.topic.split("/")[-1]) for m in bridge._buf] == ["status-a", "status-b", "meter"]
    bridge.enqueue(msg("status-c", True))  # full: the meter reading goes
    bridge.enqueue(msg("status-d", True))  # only newest values left: the oldest goes
    assert [(m.topic.split("/")[-1]) for m in bridge._buf] == ["status-b", "status-c", "status-d"]


async def test_a_message_the_broker_keeps_refusing_is_given_up_and_the_rest_flows(
    gateway_factory: Any, prefix: str, tmp_path: Any
) -> None:
    """A broker drops a client that publishes a packet over its max_packet_size. The first
    message in line would then be tried again first on every link, for good, and nothing behind
    it would ever go out; after HEAD_ATTEMPTS_MAX lost links it is given up (logged, counted)."""
    if not HAVE_MOSQUITTO:
        pytest.skip("no mosquitto binary for a private broker")
    broker = Mosquitto(free_port(), tmp_path)
    broker.conf.write_text(broker.conf.read_text() + "max_packet_size 1000\n")
    await broker.start()
    try:
        h: GatewayHarness = await gateway_factory(mqtt_url=broker.url, mqtt_topic_prefix=prefix,
                                                  mqtt_reconnect_min_s=0.05, mqtt_reconnect_max_s=0.2)
        assert h.gw is not None and h.gw.mqtt is not None
        bridge = h.gw.mqtt
        await bridge_up(bridge)
        async with recording(broker.url, prefix) as rec:
            dropped = _dropped()
            bridge.enqueue(topics.Outgoing(f"{prefix}/big", b'"' + b"x" * 4000 + b'"', 1, False))
            bridge.enqueue(topics.Outgoing(f"{prefix}/small", b'{"behind": "the big one"}', 1, False))
            await rec.wait_for(f"{prefix}/small")
            assert bridge.given_up == 1 and _dropped() == dropped + 1
            assert bridge.connects >= HEAD_ATTEMPTS_MAX
            assert all(t != f"{prefix}/big" for t, _, _ in rec.messages)
    finally:
        await broker.kill()


async def test_a_link_the_bridge_ends_itself_says_the_gateway_is_offline(
    gateway_factory: Any, mqtt_url: str, prefix: str, monkeypatch: Any
) -> None:
    """A publish that times out makes the bridge end its link, with a normal DISCONNECT that
    discards the will: the broker kept "online: true" through the back-off (and for good if the
    gateway stopped meanwhile)."""
    import aiomqtt

    async with recording(mqtt_url, prefix) as rec:
        h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix,
                                                  mqtt_reconnect_min_s=30.0, mqtt_reconnect_max_s=30.0)
        bridge = await connected_bridge(h)
        await rec.wait_for(f"{prefix}/gateway/status", online=True)
        real = aiomqtt.Client.publish

        async def times_out(self: Any, topic: str, *a: Any, **k: Any) -> Any:
            if topic.endswith("/stuck"):
                raise aiomqtt.MqttError("Operation timed out")  # no PUBACK within the publish timeout
            return await real(self, topic, *a, **k)

        monkeypatch.setattr(aiomqtt.Client, "publish", times_out)
        bridge.enqueue(topics.Outgoing(f"{prefix}/stuck", b"{}", 1, False))
        await bridge_down(bridge)
        said = await rec.wait_for(f"{prefix}/gateway/status", online=False)
        assert said["reason"] == "connection_lost"
