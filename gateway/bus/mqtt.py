"""The MQTT bridge: domain events out, prices / building load / grid events in.

It never stands in the OCPP path's way (docs/reliability.md M2): events reach it through its own
bus subscription, become messages in a bounded buffer, and a single sender task drains the
buffer while the broker is there. While it is not, the buffer fills to ``buffer_max`` and then
drops its oldest message (counted in ``gateway_mqtt_dropped_total``); the connection loop
reconnects with exponential back-off and jitter, and the buffer drains on reconnect.

A message leaves the buffer only after the broker accepted it (PUBACK for QoS 1), so a broker
that dies mid-publish costs a duplicate at worst, never a loss within the bound.

Inputs: the bridge connects with MQTT v5 and a persistent session (clean start off, session
expiry ``SESSION_EXPIRY_S``) under an identifier fixed for the process, so QoS 1 input sent while
the link is down waits at the broker and arrives on reconnect. A QoS 1 input is acknowledged only
once it has been handled (applied, or refused and counted): one received but not yet handled when
a link goes is still the broker's, which sends it again on the next link of the session. The
broker sends at most ``INPUTS_UNACKED_MAX`` of them ahead (MQTT v5 Receive Maximum); the rest wait
at the broker, not in this process's memory. Nothing an input or the broker does ends the
connection loop for good: an unexpected error is logged and handled as a lost connection; only
the stop ends it, and no new link is made once it has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import uuid
from collections import Counter, deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway import events as ev
from gateway import metrics
from gateway.bus import inbound, topics
from gateway.bus.site_inputs import PriceOverride, Refused, SiteInputs
from gateway.clock import to_rfc3339
from gateway.domain import GridEvent

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

# Defaults for settings the bridge reads when ``Settings`` has them (named with their units).
KEEPALIVE_S = 30
PUBLISH_TIMEOUT_S = 10.0
# How long the broker keeps the bridge's session (its subscriptions and the QoS 1 input queued for
# it) once the link is gone: a link outage up to this long loses no QoS 1 input. It also bounds an
# orphan: the identifier is new in every process, so the session a stopped or crashed gateway
# leaves behind is never resumed and the broker drops it (and what it queued) after this long.
SESSION_EXPIRY_S = 900
# The largest packet the broker may send us (MQTT v5 Maximum Packet Size; it drops larger ones
# for this client): a payload is read whole into memory before inbound's 1-MB check refuses it,
# and a broker's own limit is often hundreds of MB. Above that check, so a payload a little
# over 1 MB still arrives and is refused with a reason and counted.
MAX_PACKET_BYTES = 16 * 1024 * 1024
# How many QoS 1 inputs the broker may have sent without the bridge's acknowledgement (MQTT v5
# Receive Maximum). Inputs are acknowledged once handled, one after the other, so the rest wait
# at the broker (in the session, which outlives a lost link) rather than in the client's queue:
# without the bound, a burst of large inputs behind a slow apply all sat in memory (300 payloads
# of 0.9 MB held 263 MB). A few ahead keep the next input at hand while one is applied.
INPUTS_UNACKED_MAX = 8
# QoS 0 input is never acknowledged, so Receive Maximum does not bound it: one that arrives while
# this many messages wait already is dropped (the client library logs it). QoS 1 input always
# fits, as at most INPUTS_UNACKED_MAX of it can be waiting; dropped, it would never be acknowledged
# and would hold one of the broker's slots for the rest of the link.
INPUTS_QUEUED_QOS0_MAX = 8

PUBLISHED_EVENTS = (ev.StationConnected, ev.StationDisconnected, ev.StatusChanged, ev.SessionStarted,
                    ev.SessionUpdated, ev.SessionEnded, ev.PlanPublished, ev.SiteInputsChanged)


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError("MQTT URL must look like mqtt://host:port")
    if parts.port == 0:
        raise ValueError("MQTT URL: port 0 is no broker's port")
    return parts.hostname, parts.port or 1883


def broker_login(url: str) -> tuple[str | None, str | None]:
    """The user name and password of mqtt://user:password@host (percent-decoded), if given: a
    broker that requires a login refused the bridge for ever when they were left out."""
    parts = urlsplit(url)
    return (None if parts.username is None else unquote(parts.username),
            None if parts.password is None else unquote(parts.password))


STOP_WAIT_S = 5.0
GOODBYE_TIMEOUT_S = 2.0
# A link that lived this long (real seconds) was a working one: when it drops, the back-off starts
# again from its minimum. A shorter one (a broker that drops the bridge right after connecting)
# lets it keep growing, so a fault that recurs on every link cannot make it spin.
LINK_STABLE_S = 30.0
# The first message in line is given up after the link dropped this many times in a row while it
# was being published: a message the broker refuses by dropping the connection (larger than its
# max_packet_size, say) would otherwise stop every message behind it for good.
HEAD_ATTEMPTS_MAX = 3
# site_settings key under which the digests of the last messages applied from an input topic
# are kept, newest first, so a retained replay of one of them (a restart, an expired session) is
# known as one. Not only the last: a retained message followed by live ones that were not
# retained is still the broker's retained copy, and would otherwise undo them on the replay.
APPLIED_KEY = "mqtt_applied:{}"
APPLIED_KEPT = 32


class _InputQueue(asyncio.Queue[aiomqtt.Message]):
    """The client's queue of received input, bounded for QoS 0 (see ``INPUTS_QUEUED_QOS0_MAX``)."""

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if item.qos == 0 and self.qsize() >= INPUTS_QUEUED_QOS0_MAX:
            raise asyncio.QueueFull  # the client library catches it and drops the message
        super().put_nowait(item)


def _reason_name(code: int) -> str:
    try:
        return str(ReasonCode(PacketTypes.SUBACK, identifier=code).getName())
    except Exception:  # a code paho does not know
        return "unknown"


def _key(topic: str, payload: bytes | bytearray) -> tuple[str, bytes]:
    return topic, hashlib.sha256(payload).digest()


class MqttBridge:
    def __init__(self, gw: Gateway) -> None:
        settings = gw.settings
        if not settings.mqtt_url:
            raise ValueError("the MQTT bridge needs Settings.mqtt_url")
        self.gw = gw
        self.host, self.port = broker_address(settings.mqtt_url)
        self._username, self._password = broker_login(settings.mqtt_url)
        self.prefix = settings.mqtt_topic_prefix.rstrip("/")
        self.buffer_max: int = settings.mqtt_buffer_messages_max
        self.reconnect_min_s: float = settings.mqtt_reconnect_min_s
        self.reconnect_max_s: float = settings.mqtt_reconnect_max_s
        self.connected = False
        self.dropped = 0
        self.published = 0
        self.invalid = 0
        self.connects = 0
        self.apply_failed = 0
        self.replayed = 0
        self._applied_digests: dict[str, list[str]] = {}
        self._applying: asyncio.Future[bool] | None = None  # the input being applied
        self._site_inputs = SiteInputs(gw)
        self._buf: deque[topics.Outgoing] = deque()
        self._retained_pending: Counter[str] = Counter()  # retained topics in the buffer, how many of each
        self._ready = asyncio.Event()  # set while the buffer has something
        self._in_flight: topics.Outgoing | None = None  # being published on the current link
        self._client: aiomqtt.Client | None = None  # the current link's, while it is up
        self._stopping = False  # set when stop() begins: no link is made after that
        self._link: aiomqtt.Client | None = None  # the client connected, from connect to disconnect
        # The input handled last on a link that was gone before it could be acknowledged: the
        # broker sends it again on the next link (same session), where it is acknowledged, not
        # applied a second time.
        self._handled_unacked: tuple[str, bytes] | None = None
        # The input topics whose subscription the broker refused on the current link, with the
        # SUBACK reason code: the link is up, but those inputs never arrive.
        self.subscriptions_refused: dict[str, int] = {}
        self._head: topics.Outgoing | None = None  # the message publishing last failed on
        self._head_failures = 0  # links in a row lost while publishing it
        self.given_up = 0
        self._empty = asyncio.Event()  # set while it has nothing (a stop waits on it to drain)
        self._empty.set()
        self._down = asyncio.Event()  # set while the link is down
        self._down.set()
        self._sub: ev.Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client_id = f"{self.prefix}-gateway-{uuid.uuid4().hex[:8]}"
        # EV power per (station, evse), folded from the same events this bridge publishes, so the
        # site power it reports never lags behind the meter message it follows.
        self._ev_power_kw: dict[tuple[str, int], float] = {}

    @property
    def buffered(self) -> int:
        return len(self._buf)

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Returns at once: the broker may well be down, which only delays publishing."""
        self._sub = self.gw.bus.subscribe(*PUBLISHED_EVENTS)
        metrics.MQTT_CONNECTED.set(0)
        self._tasks = [asyncio.create_task(self._events(), name="mqtt-events"),
                       asyncio.create_task(self._connection(), name="mqtt-connection")]

    async def stop(self) -> None:
        """Publish what is pending and say goodbye, all within ``STOP_WAIT_S``: a broker that
        hangs must not hold the gateway's shutdown past its deadline (L3: gone within 10 s).

        The gateway stops its stations first: their disconnects are on the bus, and a stop that
        dropped them would leave each station's retained ``connected: true`` on the broker."""
        # First: a link made from here on would say "online" after the goodbye, and its clean
        # DISCONNECT would discard the will, leaving the gateway retained as online for good.
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_S

        def left(reserve: float = 0.0) -> float:
            return max(deadline - reserve - loop.time(), 0.0)

        events = next((t for t in self._tasks if t.get_name() == "mqtt-events"), None)
        if events is not None:
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)
            self._fold_pending()
        goodbye = topics.gateway_status(self.prefix, False, "stopped", to_rfc3339(self.gw.clock.now()))
        self.enqueue(goodbye)
        await self._applied_bounded(left())
        if self.connected:
            # Until the buffer is empty, or the link is lost meanwhile (nothing more will go out);
            # time kept back for the goodbye.
            waits = [asyncio.ensure_future(self._empty.wait()), asyncio.ensure_future(self._down.wait())]
            await asyncio.wait(waits, timeout=left(GOODBYE_TIMEOUT_S), return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if self._buf:
                log.warning("MQTT bridge: %d message(s) not published at the stop", len(self._buf))
        # The link up now, if any (read after the waits: the one there before them may be gone).
        # Also one still saying "online" and subscribing: the goodbye then goes out after that.
        client = self._client
        if goodbye in self._buf and client is not None and left() > 0:
            # Ahead of the rest: the clean DISCONNECT below discards the will, and without the
            # goodbye the broker would keep "online: true" for a gateway that is gone.
            with contextlib.suppress(Exception):
                await client.publish(goodbye.topic, goodbye.payload, qos=goodbye.qos, retain=goodbye.retain,
                                     timeout=min(GOODBYE_TIMEOUT_S, left()))
        if self._link is not None:
            # Its DISCONNECT, once the tasks are cancelled, waits on the client's own timeout
            # (PUBLISH_TIMEOUT_S): kept within what is left, so that a DISCONNECT that cannot be
            # written (a hung broker) ends the connection task before the stop gives up on it.
            self._link.timeout = max(left() - 0.1, 0.0)
        for t in self._tasks:
            t.cancel()
        # A client stuck in its disconnect must not hold up the gateway's shutdown deadline.
        _, pending = await asyncio.wait(self._tasks, timeout=max(left(), 0.1))
        if pending:
            log.warning("MQTT bridge: %d task(s) did not stop within %g s", len(pending), STOP_WAIT_S)
        # One that came in while the buffer drained is let finish too, in what time is left.
        await self._applied_bounded(left())
        if self._sub is not None:
            self._sub.close()
        self._set_connected(False)

    async def _applied_bounded(self, timeout_s: float) -> None:
        if self._applying is not None and not self._applying.done():
            # An input being applied is let finish (bounded): cut off, it would be half applied.
            await asyncio.wait([self._applying], timeout=timeout_s)
            if not self._applying.done():
                log.warning("MQTT bridge: an input was still being applied at the stop")

    # --- out ------------------------------------------------------------------------------
    def _fold_pending(self) -> None:
        """Turn the events still queued for the bridge into messages (at a stop, the stations'
        disconnects)."""
        assert self._sub is not None
        while not self._sub.queue.empty():
            self._enqueue_for(self._sub.queue.get_nowait())

    def _enqueue_for(self, e: ev.Event) -> None:
        try:
            for msg in self._messages_for(e):
                self.enqueue(msg)
        except Exception:
            log.exception("could not turn %s into MQTT messages", type(e).__name__)

    def enqueue(self, msg: topics.Outgoing) -> None:
        if len(self._buf) >= self.buffer_max:
            self._drop_one()
            self.dropped += 1
            metrics.MQTT_DROPPED.inc()
        self._buf.append(msg)
        self._empty.clear()
        if msg.retain:
            self._retained_pending[msg.topic] += 1
        metrics.MQTT_BUFFERED.set(len(self._buf))
        self._ready.set()

    def _drop_one(self) -> None:
        """Make room: the oldest message that is not a retained topic's newest value pending (a
        station's last status must reach the broker after an outage full of meter readings);
        only when every message is one, the oldest."""
        i = next((j for j, m in enumerate(self._buf) if not m.retain or self._retained_pending[m.topic] > 1), 0)
        gone = self._buf[i]
        del self._buf[i]
        self._forget(gone)

    def _forget(self, msg: topics.Outgoing) -> None:
        if msg.retain:
            self._retained_pending[msg.topic] -= 1
            if self._retained_pending[msg.topic] <= 0:
                del self._retained_pending[msg.topic]

    async def _events(self) -> None:
        assert self._sub is not None
        while True:
            self._enqueue_for(await self._sub.get())
            metrics.EVENT_QUEUE_DEPTH.labels("mqtt").set(self._sub.queue.qsize())
            metrics.EVENTS_DROPPED.labels("mqtt").set(self._sub.dropped)

    def _messages_for(self, e: ev.Event) -> list[topics.Outgoing]:
        if isinstance(e, ev.PlanPublished):
            return [topics.plan(self.prefix, e, self._plan_sessions(e))]
        out = topics.for_event(self.prefix, e)
        changes_power = isinstance(e, ev.SiteInputsChanged) and e.what == "building_load"
        if isinstance(e, ev.SessionUpdated) and e.power_kw is not None:
            self._ev_power_kw[(e.station_id, e.evse_id)] = e.power_kw
            changes_power = True
        elif isinstance(e, ev.SessionEnded):
            changes_power = self._ev_power_kw.pop((e.station_id, e.evse_id), None) is not None
        if changes_power:
            out.append(self._site_power())
        return out

    def _site_power(self) -> topics.Outgoing:
        ev_kw = sum(self._ev_power_kw.values())
        return topics.site_power(self.prefix, to_rfc3339(self.gw.clock.now()), self.gw.state.building_load_kw,
                                 ev_kw)

    def _plan_sessions(self, e: ev.PlanPublished) -> list[dict[str, Any]]:
        sched = self.gw.scheduler
        latest = None if sched is None else sched.latest
        if latest is None or latest.plan_id != e.plan_id:
            return []
        return [{"transaction_id": s.transaction_id, "station_id": s.station_id, "evse_id": s.evse_id,
                 "power_kw_now": round(s.power_kw[0], 4) if s.power_kw else 0.0,
                 "energy_by_departure_kwh": round(s.energy_by_departure_kwh, 4)}
                for s in latest.plan.sessions]

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._buf:
                self._ready.clear()
                self._empty.set()
                await self._ready.wait()
                continue
            msg = self._buf[0]
            self._in_flight = msg
            await client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                                 timeout=PUBLISH_TIMEOUT_S)
            self._in_flight = None
            if self._head is msg:
                self._head, self._head_failures = None, 0
            # Only now is it the broker's: a failure above leaves it first in line for the next try.
            if self._buf and self._buf[0] is msg:
                self._forget(self._buf.popleft())
            if not self._buf:
                self._empty.set()
            self.published += 1
            metrics.MQTT_PUBLISHED.inc()
            metrics.MQTT_BUFFERED.set(len(self._buf))

    def _link_lost(self) -> None:
        """The link went while a message was being published (the broker's answer to it, maybe)."""
        msg, self._in_flight = self._in_flight, None
        if msg is None or not self._buf or self._buf[0] is not msg:
            return
        if self._head is not msg:
            self._head, self._head_failures = msg, 0
        self._head_failures += 1
        if self._head_failures >= HEAD_ATTEMPTS_MAX:
            self._forget(self._buf.popleft())
            self._head, self._head_failures = None, 0
            self.given_up += 1
            self.dropped += 1
            metrics.MQTT_DROPPED.inc()
            metrics.MQTT_BUFFERED.set(len(self._buf))
            log.error("MQTT message on %s (%d bytes) given up: the link was lost %d times in a row while "
                      "publishing it (does the broker refuse it?)", msg.topic, len(msg.payload), HEAD_ATTEMPTS_MAX)

    # --- in -------------------------------------------------------------------------------
    async def _receive(self, client: aiomqtt.Client) -> None:
        await self._applied()  # in order: the last link's input first
        async for message in client.messages:
            # Shielded: when the link drops (or the send side fails) while an input is applied,
            # _serve cancels this loop; the input must not be cut off half-way (in memory but not
            # stored, or stored but not in force).
            self._applying = asyncio.ensure_future(self._take(client, message))
            await asyncio.shield(self._applying)

    async def _take(self, client: aiomqtt.Client, message: aiomqtt.Message) -> bool:
        """Handle one received input, then acknowledge it on its link (QoS 1)."""
        topic, payload = str(message.topic), message.payload
        key = _key(topic, payload) if isinstance(payload, bytes | bytearray) else None
        again, self._handled_unacked = self._handled_unacked, None
        if again is not None and key == again and message.qos > 0:
            # The broker's resend of the input handled as the last link went (it never got the
            # acknowledgement): handled already, so only acknowledged. The broker resends what
            # was unacknowledged first on a resumed session, so only the first input is compared.
            log.info("MQTT input on %s handled already on the last link; acknowledged", topic)
            self._acknowledge(client, message, key)
            return False
        try:
            done = await self.handle_input(topic, payload, retained=bool(message.retain))
        except Exception:
            # handle_input counts what goes wrong and never raises; should it, the message is
            # still acknowledged below: sent again, it would only fail again, for ever.
            log.exception("MQTT input on %s could not be handled", topic)
            done = False
        # Handled (applied, refused or failed, each counted): now the broker may forget it. Not
        # before: a link torn down meanwhile would lose it with the client's queue.
        self._acknowledge(client, message, key)
        return done

    def _acknowledge(self, client: aiomqtt.Client, message: aiomqtt.Message, key: tuple[str, bytes] | None) -> None:
        if message.qos == 0:
            return
        # Only on the link the bridge still serves: one being torn down may or may not carry it,
        # and only one certainly not acknowledged is certainly sent again (and then skipped).
        if self._client is client:
            # paho has no public handle on aiomqtt's client; manual_ack_set(True) made this ours.
            rc = client._client.ack(message.mid, message.qos)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        self._handled_unacked = key

    async def _applied(self) -> None:
        """Wait for the input being applied, if any (it never raises: handle_input counts)."""
        if self._applying is not None and not self._applying.done():
            await asyncio.shield(self._applying)

    async def handle_input(self, topic: str, payload: Any, retained: bool = False) -> bool:
        """Validate and apply one input message; a bad one is logged and counted, never raised.

        ``retained``: the broker sent it because the bridge subscribed (a restart, or a session
        that expired), not because someone published it now. If it is the very message this
        topic applied last, it is skipped: whatever changed since (a REST update of the same grid
        event or price window, a newer building load without ``ts``) must not be undone by an old
        message coming round again. A retained message the gateway never applied (published while
        it was away) is applied like any other."""
        name = topics.input_name(self.prefix, topic)
        if name is None:
            self._refuse("unknown", topic, "not an input topic")
            return False
        if isinstance(payload, bytes | bytearray | str) and len(payload) == 0:
            # MQTT's way to clear a topic's retained message (its subscribers get the empty
            # message too): the sender withdrew its retained state, it sent nothing wrong.
            log.debug("MQTT retained message on %s cleared; nothing to apply", topic)
            return False
        try:
            value = inbound.parse(name, payload)
        except inbound.Invalid as exc:
            self._refuse(name, topic, str(exc))
            return False
        except Exception as exc:
            # parse is meant to turn every bad payload into Invalid; one it did not foresee is
            # still the sender's message that could not be read, and must not reach the loop.
            self._refuse(name, topic, f"could not be parsed ({type(exc).__name__})", exc)
            return False
        digest = hashlib.sha256(payload.encode() if isinstance(payload, str) else bytes(payload)).hexdigest()
        try:
            if retained and digest in await self._applied_recently(name):
                self.replayed += 1
                metrics.MQTT_REPLAYED.labels(name).inc()
                log.info("MQTT retained message on %s skipped: it was applied already", topic)
                return False
            await self._apply(value)
        except Refused as exc:
            # Well-formed, but against what was applied before (stale, a cancelled grid event).
            self._refuse(name, topic, str(exc))
            return False
        except Exception:
            # Stored state could not be written (database away): the input is lost, say so, and
            # apart from bad messages: this one was fine, the gateway failed it.
            log.exception("MQTT input on %s could not be applied", topic)
            self.apply_failed += 1
            metrics.MQTT_APPLY_FAILED.labels(name).inc()
            return False
        metrics.MQTT_RECEIVED.labels(name).inc()
        await self._note_applied(name, digest)
        return True

    async def _applied_recently(self, name: str) -> list[str]:
        """The digests of the last messages applied from input ``name``, newest first (read from
        the database once per process: it outlives restarts)."""
        known = self._applied_digests.get(name)
        if known is None:
            row = await self.gw.planning.setting(APPLIED_KEY.format(name))
            recent = [] if row is None else row.get("recent") or [row.get("sha256")]
            known = self._applied_digests[name] = [str(d) for d in recent if d]
        return known

    async def _note_applied(self, name: str, digest: str) -> None:
        try:
            recent = [digest, *(d for d in await self._applied_recently(name) if d != digest)][:APPLIED_KEPT]
            self._applied_digests[name] = recent
            await self.gw.planning.set_setting(APPLIED_KEY.format(name), {"sha256": digest, "recent": recent},
                                               "mqtt", self.gw.clock.now())
        except Exception:
            # The input is applied and stored; only the replay guard is not: a later retained
            # replay of it is then applied again (as before the guard), so it is worth a warning.
            log.warning("MQTT input on %s applied, but its digest could not be stored", name, exc_info=True)

    def _refuse(self, name: str, topic: str, reason: str, exc: BaseException | None = None) -> None:
        self.invalid += 1
        metrics.MQTT_INVALID.labels(name).inc()
        # The payload itself is never logged (it may be megabytes, or 100 kB of "[").
        log.warning("MQTT message on %s refused: %s", topic, reason, exc_info=exc)

    async def _apply(self, value: Any) -> None:
        site = self._site_inputs
        if isinstance(value, inbound.Prices):
            prices = [PriceOverride(p.start, p.end, p.import_price_per_kwh, p.export_price_per_kwh)
                      for p in value.prices]
            await site.set_price_overrides(prices, "mqtt")
        elif isinstance(value, inbound.BuildingLoad):
            forecast = None if value.forecast is None else [(p.start, p.power_kw) for p in value.forecast]
            await site.set_building_load(value.power_kw, forecast, "mqtt", ts=value.ts)
        elif isinstance(value, inbound.GridEventMsg):
            if value.cancel:
                await site.cancel_grid_event(value.id)
            else:
                assert value.start is not None and value.end is not None and value.kind is not None
                await site.add_grid_event(GridEvent(value.id, value.start, value.end, value.kind,
                                                    value.payment_per_kwh, value.cap_kw), "mqtt")

    # --- the connection -------------------------------------------------------------------
    def _set_connected(self, up: bool) -> None:
        self.connected = up
        if up:
            self._down.clear()
        else:
            self._down.set()
        metrics.MQTT_CONNECTED.set(1 if up else 0)

    def _will(self) -> aiomqtt.Will:
        # Published by the broker when the link ends without a DISCONNECT (a crash, a cut link,
        # a missed keepalive); a clean stop publishes its own goodbye instead.
        gone = topics.gateway_status(self.prefix, False, "connection_lost")
        return aiomqtt.Will(gone.topic, gone.payload, qos=gone.qos, retain=gone.retain)

    def _session_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.MaximumPacketSize = MAX_PACKET_BYTES
        props.ReceiveMaximum = INPUTS_UNACKED_MAX
        return props

    def _ending(self) -> bool:
        """The stop has begun, or the connection task is being cancelled: the connection loop
        ends, whatever exception surfaced (aiomqtt's exit replaces a CancelledError with the
        MqttError of a DISCONNECT it could not send)."""
        task = asyncio.current_task()
        return self._stopping or (task is not None and task.cancelling() > 0)

    async def _subscribe_inputs(self, client: aiomqtt.Client) -> None:
        # Retained inputs only for a new subscription (first connect, or the session expired): a
        # resumed session already had them, and replaying them on every link blip would only
        # re-apply old values (or refuse them as stale).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        refused: dict[str, int] = {}
        for name in topics.INPUTS:
            topic = topics.input_topic(self.prefix, name)
            granted = await client.subscribe(topic, options=options)
            # A code of 0x80 or more is a refusal (not authorised, say): the link works, but this
            # input never arrives on it, which nothing else would show.
            codes = [c.value if isinstance(c, ReasonCode) else int(c) for c in granted]
            code = next((c for c in codes if c >= 0x80), None)
            if code is not None:
                refused[topic] = code
                log.error("MQTT broker refused the subscription to %s (reason code 0x%02X %s): input %s is "
                          "not received on this link", topic, code, _reason_name(code), name)
        self.subscriptions_refused = refused

    async def _connection(self) -> None:
        delay = self.reconnect_min_s
        loop = asyncio.get_running_loop()
        up_since = 0.0
        failed_for: str | None = None  # why the last connect failed
        while True:
            if self._ending():
                raise asyncio.CancelledError
            try:
                # clean_start=False on every connect (the identifier is this process's own, so
                # the first finds no old session): a reconnect resumes the session, and with it
                # the QoS 1 input the broker queued while the link was down, or sent on the last
                # link and never acknowledged.
                client = aiomqtt.Client(self.host, self.port, identifier=self._client_id,
                                        username=self._username, password=self._password,
                                        protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                                        properties=self._session_properties(), queue_type=_InputQueue,
                                        keepalive=KEEPALIVE_S, timeout=PUBLISH_TIMEOUT_S,
                                        will=self._will())
                # paho acknowledges a QoS 1 input as it arrives, and aiomqtt has no option for
                # this: _take acknowledges each once handled (see the module's docstring).
                client._client.manual_ack_set(True)
                self._link = client
                async with client:
                    if self._ending():
                        # Connected just as the stop began: no "online" for a gateway going away.
                        raise asyncio.CancelledError
                    # From here: a stop that begins while this link says "online" or subscribes
                    # sends its goodbye on it, after the "online".
                    self._client = client
                    try:
                        # First on every link, before what was buffered: a consumer that saw the
                        # will learns the retained topics are kept true again.
                        online = topics.gateway_status(self.prefix, True, "connected",
                                                       to_rfc3339(self.gw.clock.now()))
                        await client.publish(online.topic, online.payload, qos=online.qos, retain=online.retain,
                                             timeout=PUBLISH_TIMEOUT_S)
                        self.connects += 1
                        failed_for = None
                        metrics.MQTT_RECONNECTS.labels("ok").inc()
                        await self._subscribe_inputs(client)
                        self._set_connected(True)
                        up_since = loop.time()
                        log.info("MQTT connected to %s:%d", self.host, self.port)
                        await self._serve(client)
                    except Exception:
                        # Before the goodbye: an input handled from now on is not acknowledged on
                        # this link, and so is known to come again (see _acknowledge).
                        self._client = None
                        await self._link_torn(client)
                        raise
                    finally:
                        self._client = None
            except aiomqtt.MqttError as exc:
                if self._ending():
                    # Never a reconnect after (or during) the stop: the bridge would come back
                    # online after the gateway said goodbye.
                    raise asyncio.CancelledError from exc
                if self.connected:
                    log.warning("MQTT connection lost: %s (%d messages buffered)", exc, len(self._buf))
                    self._link_lost()
                    # A link that worked for a while and went away: the back-off starts afresh.
                    # (Not on connect, nor after a brief link: a fault that recurs right after
                    # every connect must not spin.)
                    if loop.time() - up_since >= LINK_STABLE_S:
                        delay = self.reconnect_min_s
                else:
                    metrics.MQTT_RECONNECTS.labels("failed").inc()
                    # Said once per reason (a broker away, a login refused), then kept quiet while
                    # the same reason recurs at every back-off.
                    reason = str(exc)
                    (log.debug if reason == failed_for else log.warning)(
                        "MQTT connect to %s:%d failed: %s", self.host, self.port, exc)
                    failed_for = reason
            except Exception as exc:
                if self._ending():
                    raise asyncio.CancelledError from exc
                # A bug, or something the client library did not wrap: ending here would leave
                # the gateway without MQTT for good and, silently, still reporting "connected".
                # Treated as a lost connection instead. (CancelledError is no Exception: stop()
                # still ends the loop, and so does any error once it is ending, above.)
                if not self.connected:
                    metrics.MQTT_RECONNECTS.labels("failed").inc()
                log.exception("MQTT bridge: unexpected error; reconnecting (%d messages buffered)",
                              len(self._buf))
                self._link_lost()
            finally:
                self._link = None
            self._set_connected(False)
            # Real seconds: this waits on an outside service, not on simulated time. Jitter keeps a
            # fleet of gateways from reconnecting in step after a broker restart.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.reconnect_max_s)

    async def _link_torn(self, client: aiomqtt.Client) -> None:
        """The bridge ends a link itself (a publish or subscribe that timed out, an error): the
        client then sends a normal DISCONNECT, which discards the will, and the broker would keep
        "online: true" through the back-off, or for good if the gateway stops meanwhile. Said
        here while the link may still carry it; where it cannot, the broker sees no DISCONNECT
        either and publishes the will."""
        lost = topics.gateway_status(self.prefix, False, "connection_lost", to_rfc3339(self.gw.clock.now()))
        with contextlib.suppress(Exception):
            await client.publish(lost.topic, lost.payload, qos=lost.qos, retain=lost.retain,
                                 timeout=GOODBYE_TIMEOUT_S)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Send and receive until either stops (the broker went away, or an error); then both stop."""
        tasks = [asyncio.create_task(self._send(client), name="mqtt-send"),
                 asyncio.create_task(self._receive(client), name="mqtt-receive")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            # Both awaited whatever either raised: none left pending, no exception unretrieved.
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()
        raise aiomqtt.MqttError("message stream ended")
