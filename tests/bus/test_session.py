"""A QoS 1 input published while the gateway's link to the broker is down is not lost: the
bridge keeps a persistent session (MQTT v5, bounded by a session expiry interval), so the broker
queues the input and delivers it once the bridge is back; and a resumed session does not have
the broker replay retained inputs the bridge already had."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.bus import mqtt as mqtt_module
from gateway.clock import to_rfc3339
from tests.api.conftest import eventually
from tests.bus.conftest import bridge_down, bridge_up, connected_bridge, publish, recording, retained_cleared
from tests.conftest import GatewayHarness
from tests.tcp_proxy import TcpProxy


@pytest.fixture
async def broker_proxy(mqtt_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(mqtt_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 1883)
    await proxy.start()
    yield proxy
    await proxy.close()


async def _bridge_behind(gateway_factory: Any, prefix: str, proxy: TcpProxy) -> tuple[Any, Any]:
    """A gateway whose bridge reaches the broker through ``proxy`` (quick to reconnect), once
    connected: (gateway, bridge)."""
    h: GatewayHarness = await gateway_factory(
        mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", mqtt_topic_prefix=prefix,
        mqtt_reconnect_min_s=0.2, mqtt_reconnect_max_s=1.0,
    )
    bridge = await connected_bridge(h)
    return bridge.gw, bridge


async def test_qos1_input_published_during_a_link_outage_is_delivered(
    gateway_factory: Any, mqtt_url: str, prefix: str, broker_proxy: TcpProxy
) -> None:
    gw, bridge = await _bridge_behind(gateway_factory, prefix, broker_proxy)
    client_id = bridge._client_id

    await broker_proxy.cut()
    await bridge_down(bridge)

    now = gw.clock.now()
    event = {"id": "gap-1", "start": now.isoformat(), "end": (now + timedelta(hours=2)).isoformat(),
             "kind": "import_cap", "cap_kw": 50.0}
    # Straight to the broker (not through the cut link), QoS 1, not retained: only the session
    # can carry it to the gateway.
    await publish(mqtt_url, f"{prefix}/in/grid_events", json.dumps(event))

    await broker_proxy.restore()
    await bridge_up(bridge)
    assert bridge._client_id == client_id  # the session is found by this identifier

    async def delivered() -> bool:
        return "gap-1" in gw.state.grid_events

    await eventually(delivered, "the input queued by the broker during the outage to be applied")
    assert gw.state.grid_events["gap-1"].cap_kw == 50.0


async def test_a_resumed_session_does_not_replay_retained_inputs(
    gateway_factory: Any, mqtt_url: str, prefix: str, broker_proxy: TcpProxy
) -> None:
    topic = f"{prefix}/in/building_load"
    gw, bridge = await _bridge_behind(gateway_factory, prefix, broker_proxy)
    def applied(kw: float) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return gw.state.building_load_kw == kw
        return check

    now = gw.clock.now()
    async with retained_cleared(mqtt_url, topic):
        old = json.dumps({"power_kw": 12.0, "ts": to_rfc3339(now - timedelta(minutes=2))})
        await publish(mqtt_url, topic, old, retain=True)
        await eventually(applied(12.0), "the retained reading to be applied")
        newer = {"power_kw": 13.0, "ts": to_rfc3339(now - timedelta(minutes=1))}
        await publish(mqtt_url, topic, json.dumps(newer))
        await eventually(applied(13.0), "a newer reading to be applied")

        seen: list[bytes] = []
        handle = bridge.handle_input

        async def spy(t: str, payload: Any, retained: bool = False) -> bool:
            seen.append(bytes(payload))
            return bool(await handle(t, payload, retained))

        bridge.handle_input = spy
        await broker_proxy.cut()
        await bridge_down(bridge)
        await broker_proxy.restore()
        await bridge_up(bridge)
        # Inputs are handled one after the other, in order: a replay of the retained reading
        # (sent by the broker on the resubscribe, so before this marker) has been handled by the
        # time the marker is applied.
        marker = json.dumps({"power_kw": 14.0, "ts": to_rfc3339(now)})
        await publish(mqtt_url, topic, marker)
        await eventually(applied(14.0), "the marker to be applied")
        assert bridge.connects == 2
        assert marker.encode() in seen
        # (The newer reading may come again: QoS 1 is at least once, and its PUBACK may not have
        # passed the proxy before the cut. Same ts, so it is re-applied, not stale.)
        assert old.encode() not in seen, "the broker replayed the retained reading into the resumed session"
        assert bridge.invalid == 0


async def test_an_input_being_applied_when_the_link_drops_is_applied_whole(
        gateway_factory: Any, mqtt_url: str, prefix: str) -> None:
    """The input is acknowledged on receipt; the link drops while it is being stored (here a
    session take-over by another client with the bridge's id). Cutting it off there left the value
    in force but not stored, and a restart brought the older one back."""
    import asyncio

    import aiomqtt

    from gateway import events as ev

    h: GatewayHarness = await gateway_factory(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix)
    bridge = await connected_bridge(h)
    assert h.gw is not None
    real = h.gw.planning.set_setting
    storing, release = asyncio.Event(), asyncio.Event()
    stored: list[Any] = []

    async def slow(*a: Any, **k: Any) -> None:
        storing.set()
        await release.wait()
        await real(*a, **k)
        stored.append(a[1])

    h.gw.planning.set_setting = slow  # type: ignore[method-assign]
    await publish(mqtt_url, f"{prefix}/in/building_load", json.dumps({"power_kw": 77.0}))
    await asyncio.wait_for(storing.wait(), 30)
    host, port = urlsplit(mqtt_url).hostname or "127.0.0.1", urlsplit(mqtt_url).port or 1883
    async with aiomqtt.Client(host, port, identifier=bridge._client_id, protocol=aiomqtt.ProtocolVersion.V5,
                              clean_start=False):
        pass
    # The link is gone; the next publish finds it so and the bridge tears down its loops.
    h.gw.bus.publish(ev.StationConnected(h.gw.clock.now(), "CS-ANY"))
    await bridge_down(bridge)
    release.set()

    async def stored_whole() -> bool:
        return bool(stored)

    await eventually(stored_whole, "the input to be stored")
    assert stored[0]["power_kw"] == 77.0 and h.gw.state.building_load_kw == 77.0
    assert bridge.apply_failed == 0
    await bridge_up(bridge)


async def test_a_lost_link_publishes_the_gateways_will_and_the_next_link_takes_it_back(
    gateway_factory: Any, mqtt_url: str, prefix: str, broker_proxy: TcpProxy
) -> None:
    """A station's retained ``connected: true`` outlives a gateway whose link is gone; the
    broker's will on ``{p}/gateway/status`` tells consumers to read it as stale."""
    async with recording(mqtt_url, prefix) as rec:
        _, bridge = await _bridge_behind(gateway_factory, prefix, broker_proxy)
        await rec.wait_for(f"{prefix}/gateway/status", online=True)
        await broker_proxy.cut()
        await bridge_down(bridge)
        will = await rec.wait_for(f"{prefix}/gateway/status", online=False)
        assert will == {"online": False, "reason": "connection_lost"}
        await broker_proxy.restore()
        await bridge_up(bridge)

        async def online_again() -> bool:
            last = [p for t, p, _ in rec.messages if t == f"{prefix}/gateway/status"][-1]
            return bool(last["online"])

        await eventually(online_again, "the gateway to say it is online again")


async def test_a_stop_with_a_hung_broker_keeps_to_one_deadline(
    gateway_factory: Any, prefix: str, broker_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that holds the connection open and answers nothing: the stop's drain, goodbye
    and disconnect share one deadline, so the gateway's shutdown keeps to its own (L3)."""
    monkeypatch.setattr(mqtt_module, "STOP_WAIT_S", 3.0)
    monkeypatch.setattr(mqtt_module, "GOODBYE_TIMEOUT_S", 3.0)
    _, bridge = await _bridge_behind(gateway_factory, prefix, broker_proxy)
    broker_proxy.freeze()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await bridge.stop()
    # Each step on its own bound took 3 s to drain, 3 s for the goodbye and up to 3 s for the
    # client's disconnect; one deadline is 3 s, and the margin is for a loaded machine.
    assert loop.time() - began < 3.0 + 1.5
    assert not bridge.connected
    broker_proxy.thaw()
