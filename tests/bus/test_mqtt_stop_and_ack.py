"""The bridge's stop and its input acknowledgements, against a real Mosquitto.

- A stop ends the connection loop for good: no reconnect once it has begun, even when the
  client's DISCONNECT cannot be written (aiomqtt then raises MqttError in place of the
  cancellation), and so no retained ``online: true`` after the gateway left.
- A QoS 1 input is acknowledged only once handled: one received but not yet handled when the
  link goes is sent again by the broker on the next link of the session (and one handled as
  the link went is not applied twice); the broker sends only a few ahead (Receive Maximum).
- A subscription the broker refuses is said, not silently deaf.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.bus import mqtt as mqtt_module
from gateway.bus import topics
from tests.api.conftest import eventually
from tests.bus.conftest import bridge_down, bridge_up, connected_bridge, publish, recording
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.tcp_proxy import TcpProxy


def _broker(mqtt_url: str) -> tuple[str, int]:
    parts = urlsplit(mqtt_url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


@pytest.fixture
async def stalling_proxy(mqtt_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy to the broker whose ``stall()`` hangs the links open then, as a hung broker would,
    while a reconnect passes; ``reset()`` resets every link."""
    proxy = TcpProxy(*_broker(mqtt_url))
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def broker_proxy(mqtt_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(*_broker(mqtt_url))
    await proxy.start()
    yield proxy
    await proxy.close()


async def _bridge_at(gateway_factory: Any, prefix: str, port: int) -> Any:
    """A connected bridge that reaches the broker through the proxy on ``port`` (quick to
    reconnect)."""
    h: GatewayHarness = await gateway_factory(
        mqtt_url=f"mqtt://127.0.0.1:{port}", mqtt_topic_prefix=prefix,
        mqtt_reconnect_min_s=0.2, mqtt_reconnect_max_s=1.0,
    )
    return await connected_bridge(h)


def _connection_task(bridge: Any) -> asyncio.Task[None]:
    return next(t for t in bridge._tasks if t.get_name() == "mqtt-connection")


async def _stuck_publishing(bridge: Any, prefix: str) -> None:
    """Put a message larger than the socket buffers in line and wait until it is being published:
    on a stalled link, the client can then write nothing more (not even its DISCONNECT)."""
    big = topics.Outgoing(f"{prefix}/big", b'"' + b"x" * 12_000_000 + b'"', 1, False)
    bridge.enqueue(big)

    async def in_flight() -> bool:
        return bool(bridge._in_flight is big)

    await eventually(in_flight, "the large message to be published")


async def _round_trip(bridge: Any, prefix: str) -> None:
    """Until a message the bridge publishes now is confirmed by the broker: what the bridge sent
    before it on that connection (acknowledgements) has then reached the broker too."""
    published = bridge.published
    bridge.enqueue(topics.Outgoing(f"{prefix}/probe", b"{}", 1, False))

    async def confirmed() -> bool:
        return bool(bridge.published > published)

    await eventually(confirmed, "the probe to be confirmed by the broker")


# --- 1: the stop ends the connection loop ------------------------------------------------------
async def test_a_stop_whose_disconnect_cannot_be_written_never_reconnects(
    gateway_factory: Any, prefix: str, stalling_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled in aiomqtt's exit, whose DISCONNECT could not go out, the connection task got an
    MqttError instead of its cancellation, took it for a lost link and reconnected after the stop
    had returned: the gateway came back online once shut down."""
    monkeypatch.setattr(mqtt_module, "PUBLISH_TIMEOUT_S", 8.0)  # the large publish outlives the stop
    monkeypatch.setattr(mqtt_module, "STOP_WAIT_S", 3.0)
    monkeypatch.setattr(mqtt_module, "GOODBYE_TIMEOUT_S", 1.0)
    bridge = await _bridge_at(gateway_factory, prefix, stalling_proxy.port)
    task = _connection_task(bridge)
    stalling_proxy.stall()  # new connections still pass: a reconnect would succeed
    await _stuck_publishing(bridge, prefix)

    await bridge.stop()

    async def ended_or_back() -> bool:
        return bool(task.done() or bridge.connects > 1)

    await eventually(ended_or_back, "the connection task to end (or to reconnect)")
    assert bridge.connects == 1, "the bridge reconnected after the stop"
    assert task.done() and task.cancelled()
    assert not bridge.connected


# --- 2: no reconnect during the stop, no retained online after it --------------------------------
async def test_a_link_lost_during_the_stop_is_not_replaced_and_online_is_not_left_retained(
    gateway_factory: Any, mqtt_url: str, prefix: str, stalling_proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The link is torn down (a publish that timed out) while the stop waits for the buffer to
    drain. A reconnect then published a retained ``online: true``, the goodbye went to the old
    client, and the new link's clean DISCONNECT discarded the will: retained online for good."""
    monkeypatch.setattr(mqtt_module, "PUBLISH_TIMEOUT_S", 1.0)
    monkeypatch.setattr(mqtt_module, "STOP_WAIT_S", 5.0)
    monkeypatch.setattr(mqtt_module, "GOODBYE_TIMEOUT_S", 2.0)
    status = f"{prefix}/gateway/status"
    async with recording(mqtt_url, prefix) as rec:
        bridge = await _bridge_at(gateway_factory, prefix, stalling_proxy.port)
        await rec.wait_for(status, online=True)
        stalling_proxy.stall()
        await _stuck_publishing(bridge, prefix)

        await bridge.stop()
        assert bridge.connects == 1, "the bridge reconnected during the stop"

        # The stalled link dies for good: the broker publishes the will. The last status must
        # say offline (a later link's "online" would outlast it).
        await stalling_proxy.reset()

        async def last_says_offline() -> bool:
            last = [p for t, p, _ in rec.messages if t == status][-1]
            return not last["online"]

        await eventually(last_says_offline, "the gateway's last retained status to say offline")
        assert not [p for t, p, _ in rec.messages if t == status][-1]["online"]
        assert bridge.connects == 1


# --- 3: inputs are acknowledged once handled -----------------------------------------------------
async def test_inputs_received_but_not_handled_when_the_link_drops_come_again(
    gateway_factory: Any, mqtt_url: str, prefix: str, broker_proxy: TcpProxy
) -> None:
    """Five QoS 1 inputs reach the bridge while the first is being applied; the link drops.
    Acknowledged on arrival, the four waiting in the client's queue were lost with it. Now the
    broker sends them again on the next link, and the one applied as the link went is not
    applied a second time. A refused input is acknowledged too (never sent again)."""
    bridge = await _bridge_at(gateway_factory, prefix, broker_proxy.port)
    real_apply = bridge._apply
    applying, release = asyncio.Event(), asyncio.Event()
    applied: list[float] = []

    async def gated(value: Any) -> None:
        applying.set()
        await release.wait()
        await real_apply(value)
        applied.append(value.power_kw)

    bridge._apply = gated
    topic = f"{prefix}/in/building_load"
    try:
        for payload in ({"power_kw": 1.0}, {"power_kw": 2.0}, "not json", {"power_kw": 4.0}, {"power_kw": 5.0}):
            await publish(mqtt_url, topic, payload if isinstance(payload, str) else json.dumps(payload))
        await asyncio.wait_for(applying.wait(), EVENT_TIMEOUT_S)
        client = bridge._client

        async def all_received() -> bool:
            return len(client.messages) == 4

        await eventually(all_received, "the other four inputs to wait in the client")
        # Whatever the bridge acknowledged so far has reached the broker (not lost in the proxy).
        await _round_trip(bridge, prefix)

        await broker_proxy.cut()
        # Nothing reads the link while the input is applied and nothing is to be sent: the
        # next publish finds it gone.
        bridge.enqueue(topics.Outgoing(f"{prefix}/probe", b"{}", 1, False))
        await bridge_down(bridge)
        release.set()  # the first is applied after its link went
        await broker_proxy.restore()
        await bridge_up(bridge)

        async def all_applied() -> bool:
            return len(applied) >= 4

        await eventually(all_applied, "the inputs waiting when the link dropped to be applied")
        assert applied == [1.0, 2.0, 4.0, 5.0]
        assert bridge.invalid == 1

        # Everything handled on this link was acknowledged: the next link gets none of it again.
        await _round_trip(bridge, prefix)
        await broker_proxy.cut()
        await bridge_down(bridge)
        await broker_proxy.restore()
        await bridge_up(bridge)
        await publish(mqtt_url, topic, json.dumps({"power_kw": 6.0}))

        async def marker_applied() -> bool:
            return 6.0 in applied

        await eventually(marker_applied, "the marker to be applied")
        assert applied == [1.0, 2.0, 4.0, 5.0, 6.0]
        assert bridge.invalid == 1, "the refused input was sent again"
    finally:
        release.set()


async def test_the_broker_sends_only_a_few_unacknowledged_inputs_ahead(
    gateway_factory: Any, mqtt_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a slow apply, every input the broker had went into the client's queue at once (300
    payloads of 0.9 MB held 263 MB). With Receive Maximum the rest wait at the broker."""
    arrivals: list[int] = []  # the QoS of each input that reached the bridge's client
    marker_in = asyncio.Event()
    real_on_message = aiomqtt.Client._on_message

    def spy(self: aiomqtt.Client, client: Any, userdata: Any, message: Any) -> None:
        if str(message.topic).startswith(f"{prefix}/in/"):
            arrivals.append(message.qos)
            if message.qos == 0:
                marker_in.set()
        real_on_message(self, client, userdata, message)

    monkeypatch.setattr(aiomqtt.Client, "_on_message", spy)  # before the bridge's client is made
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    real_apply = bridge._apply
    release = asyncio.Event()
    applied: list[float] = []

    async def gated(value: Any) -> None:
        await release.wait()
        await real_apply(value)
        applied.append(value.power_kw)

    bridge._apply = gated
    topic = f"{prefix}/in/building_load"
    values = [float(i) for i in range(1, 31)]
    try:
        host, port = _broker(mqtt_url)
        async with aiomqtt.Client(host, port) as sender:
            for v in values:
                await sender.publish(topic, json.dumps({"power_kw": v}), qos=1)
            # QoS 0 is not held back by Receive Maximum: it arrives once the broker has sent
            # every QoS 1 input it was going to send now.
            await sender.publish(topic, json.dumps({"power_kw": 0.0}), qos=0)
        await asyncio.wait_for(marker_in.wait(), EVENT_TIMEOUT_S)
        qos1 = arrivals.count(1)
        assert qos1 < len(values), f"all {qos1} inputs were pushed into the client at once"
        assert qos1 <= mqtt_module.INPUTS_UNACKED_MAX
    finally:
        release.set()

    async def all_applied() -> bool:
        return len([v for v in applied if v]) == len(values)

    await eventually(all_applied, "every input to be applied once the apply is fast again")
    assert [v for v in applied if v] == values


def test_queued_qos0_input_is_bounded_and_qos1_always_fits() -> None:
    queue = mqtt_module._InputQueue()
    qos0 = [aiomqtt.Message("p/in/prices", b"{}", 0, False, 0, None)
            for _ in range(mqtt_module.INPUTS_QUEUED_QOS0_MAX)]
    for m in qos0:
        queue.put_nowait(m)
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(aiomqtt.Message("p/in/prices", b"{}", 0, False, 0, None))
    queue.put_nowait(aiomqtt.Message("p/in/prices", b"{}", 1, False, 7, None))
    assert queue.qsize() == mqtt_module.INPUTS_QUEUED_QOS0_MAX + 1


# --- 4: a refused subscription is said -----------------------------------------------------------
async def test_a_refused_input_subscription_is_logged_and_exposed(
    gateway_factory: Any, mqtt_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mosquitto grants every subscription; a broker with an ACL answers 0x87 (not authorised) in
    the SUBACK. The bridge went on reporting connected, deaf to that input, and said nothing."""
    refused_topic = f"{prefix}/in/grid_events"
    real_subscribe = aiomqtt.Client.subscribe

    async def refusing(self: aiomqtt.Client, topic: Any, *args: Any, **kwargs: Any) -> Any:
        granted = await real_subscribe(self, topic, *args, **kwargs)
        if topic == refused_topic:
            return [ReasonCode(PacketTypes.SUBACK, identifier=0x87)]
        return granted

    monkeypatch.setattr(aiomqtt.Client, "subscribe", refusing)
    caplog.set_level(logging.ERROR, logger="gateway.bus.mqtt")
    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)

    said = [r for r in caplog.records if r.levelno >= logging.ERROR and refused_topic in r.getMessage()]
    assert len(said) == 1, "the refused subscription was not logged (once)"
    assert "0x87" in said[0].getMessage()
    assert bridge.subscriptions_refused == {refused_topic: 0x87}
    # The other inputs were granted, and are not reported.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "/in/prices" in r.getMessage()]
