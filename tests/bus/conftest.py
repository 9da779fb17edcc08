"""Helpers for the MQTT bridge tests: a subscriber that records what a real broker delivers,
and a private Mosquitto process a test may kill and restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest

from gateway import metrics
from tests.api.conftest import eventually
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HAVE_MOSQUITTO = Path(MOSQUITTO).exists()


def broker(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests sharing the broker never see each other."""
    return f"gwtest-{uuid.uuid4().hex[:10]}"


@dataclass
class Recorder:
    """Every message under ``prefix/#``; ``wait_for`` returns the first that matches."""

    messages: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, topic: str, payload: dict[str, Any], retained: bool) -> None:
        async with self.arrived:
            self.messages.append((topic, payload, retained))
            self.arrived.notify_all()

    async def wait_for(self, topic: str, timeout_s: float = EVENT_TIMEOUT_S, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for t, p, _ in self.messages:
                if t == topic and all(p.get(k) == v for k, v in match.items()):
                    return p
            return None

        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: found() is not None), timeout_s)
        result = found()
        assert result is not None
        return result


async def _record(url: str, topic: str, rec: Recorder, ready: asyncio.Event) -> None:
    host, port = broker(url)
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier=f"rec-{uuid.uuid4().hex[:8]}") as client:
                await client.subscribe(topic, qos=1)
                ready.set()
                async for msg in client.messages:
                    if isinstance(msg.payload, bytes | bytearray) and msg.payload:
                        await rec.add(str(msg.topic), json.loads(msg.payload), bool(msg.retain))
        except aiomqtt.MqttError:
            ready.clear()
            await asyncio.sleep(0.2)  # the broker is away (outage test): try again


@contextlib.asynccontextmanager
async def recording(url: str, prefix: str) -> AsyncIterator[Recorder]:
    """Record ``prefix/#``; afterwards clear what was retained so the shared broker keeps nothing."""
    rec = Recorder()
    ready = asyncio.Event()
    task = asyncio.create_task(_record(url, f"{prefix}/#", rec, ready))
    await asyncio.wait_for(ready.wait(), EVENT_TIMEOUT_S)
    try:
        yield rec
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        retained = {t for t, _, _ in rec.messages}
        with contextlib.suppress(aiomqtt.MqttError):
            host, port = broker(url)
            async with aiomqtt.Client(host, port) as client:
                for t in retained:
                    await client.publish(t, b"", qos=1, retain=True)


async def publish(url: str, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
    host, port = broker(url)
    async with aiomqtt.Client(host, port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


@contextlib.asynccontextmanager
async def retained_cleared(url: str, *topics: str) -> AsyncIterator[None]:
    """Clear what a test retained on ``topics`` when it ends, so the shared broker keeps nothing."""
    try:
        yield
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            for t in topics:
                await publish(url, t, b"", retain=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A broker process of the test's own on a fixed port, so it can be killed and restarted."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            MOSQUITTO,
            "-c",
            str(self.conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENT_TIMEOUT_S
        while True:  # listening yet?
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if loop.time() > deadline or self.proc.returncode is not None:
                    raise RuntimeError("mosquitto did not start") from None
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), EVENT_TIMEOUT_S)


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    if not HAVE_MOSQUITTO:
        pytest.skip("no mosquitto binary for a private broker")
    m = Mosquitto(free_port(), tmp_path)
    yield m
    await m.kill()


def invalid_count(name: str) -> float:
    """gateway_mqtt_invalid_total for one input (bad messages)."""
    return metrics.REGISTRY.get_sample_value("gateway_mqtt_invalid_total", {"input": name}) or 0.0


def apply_failed_count(name: str) -> float:
    """gateway_mqtt_apply_failed_total for one input (good messages not stored)."""
    return metrics.REGISTRY.get_sample_value("gateway_mqtt_apply_failed_total", {"input": name}) or 0.0


async def connected_bridge(h: GatewayHarness) -> Any:
    """The gateway's MQTT bridge, once it is connected to the broker."""
    assert h.gw is not None and h.gw.mqtt is not None
    await bridge_up(h.gw.mqtt)
    return h.gw.mqtt


async def bridge_up(bridge: Any) -> None:
    """Until ``bridge`` is connected to its broker."""
    async def up() -> bool:
        return bool(bridge.connected)

    await eventually(up, "the bridge to (re)connect")


async def bridge_down(bridge: Any) -> None:
    """Until ``bridge`` has noticed its broker is gone."""
    async def down() -> bool:
        return not bridge.connected

    await eventually(down, "the bridge to notice the broker is gone")
