"""MQTT topics and payloads (docs/mqtt.md is the contract). Pure: no I/O.

Out (JSON, UTC times with ``Z``, units in field names), under ``Settings.mqtt_topic_prefix``:

    {p}/stations/{station}/status                 connected / disconnected      QoS 1, retained
    {p}/stations/{station}/evses/{evse}/status    connector status               QoS 1, retained
    {p}/stations/{station}/evses/{evse}/meter     session energy, power, SoC     QoS 0
    {p}/sessions/{tx}/started | ended             session start and end          QoS 1
    {p}/site/power                                site import now                QoS 0, retained
    {p}/plans/latest                              the newest plan's summary      QoS 1, retained
    {p}/gateway/status                            the bridge online / offline    QoS 1, retained (and the will)

In: {p}/in/prices, {p}/in/building_load, {p}/in/grid_events (see :mod:`gateway.bus.inbound`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway import events as ev
from gateway.clock import to_rfc3339

INPUTS = ("prices", "building_load", "grid_events")


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _escaped(c: str) -> str:
    if c in "%/+#" or not c.isprintable():
        return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
    return c


def segment(text: str) -> str:
    """An id as one topic level: MQTT wildcards and the level separator cannot appear in it, nor
    control characters or noncharacters (MQTT 5 §1.5.4; Mosquitto drops the connection of a
    client that publishes one, so a station's transactionId holding U+0001 would stop every
    publish behind it). Each is percent-encoded (its UTF-8 bytes as %XX), "%" itself too, so two
    ids never share a topic: "_" for all of them put CP#1, CP+1 and CP_1 on one retained status.
    An empty id is "%" alone, which no escaped id is."""
    return "".join(_escaped(c) for c in text) or "%"


def _msg(topic: str, body: dict[str, Any], qos: int, retain: bool = False) -> Outgoing:
    return Outgoing(topic, json.dumps(body, separators=(",", ":")).encode(), qos, retain)


def input_topic(prefix: str, name: str) -> str:
    return f"{prefix}/in/{name}"


def input_name(prefix: str, topic: str) -> str | None:
    head = f"{prefix}/in/"
    if not topic.startswith(head):
        return None
    name = topic[len(head):]
    return name if name in INPUTS else None


def for_event(prefix: str, e: ev.Event) -> list[Outgoing]:
    """The messages a domain event becomes (none for events that are not published)."""
    ts = to_rfc3339(e.at)
    if isinstance(e, ev.StationConnected | ev.StationDisconnected):
        return [_msg(f"{prefix}/stations/{segment(e.station_id)}/status",
                     {"station_id": e.station_id, "connected": isinstance(e, ev.StationConnected), "ts": ts},
                     1, retain=True)]
    if isinstance(e, ev.StatusChanged):
        return [_msg(f"{prefix}/stations/{segment(e.station_id)}/evses/{e.evse_id}/status",
                     {"station_id": e.station_id, "evse_id": e.evse_id, "connector_id": e.connector_id,
                      "status": e.status, "ts": ts}, 1, retain=True)]
    if isinstance(e, ev.SessionUpdated):
        return [_msg(f"{prefix}/stations/{segment(e.station_id)}/evses/{e.evse_id}/meter",
                     {"station_id": e.station_id, "evse_id": e.evse_id, "transaction_id": e.transaction_id,
                      "energy_in_kwh": e.energy_in_kwh, "energy_out_kwh": e.energy_out_kwh,
                      "power_kw": e.power_kw, "soc_percent": e.soc, "ts": ts}, 0)]
    if isinstance(e, ev.SessionStarted):
        # The idToken identifies a person: it stays off the bus.
        return [_msg(f"{prefix}/sessions/{segment(e.transaction_id)}/started",
                     {"transaction_id": e.transaction_id, "station_id": e.station_id, "evse_id": e.evse_id,
                      "ts": ts}, 1)]
    if isinstance(e, ev.SessionEnded):
        return [_msg(f"{prefix}/sessions/{segment(e.transaction_id)}/ended",
                     {"transaction_id": e.transaction_id, "station_id": e.station_id, "evse_id": e.evse_id,
                      "reason": e.reason, "ts": ts}, 1)]
    return []


def site_power(prefix: str, ts: str, building_kw: float, ev_kw: float) -> Outgoing:
    return _msg(f"{prefix}/site/power", {"power_kw": round(building_kw + ev_kw, 4),
                                          "building_load_kw": round(building_kw, 4),
                                          "ev_power_kw": round(ev_kw, 4), "ts": ts}, 0, retain=True)


def plan(prefix: str, e: ev.PlanPublished, sessions: list[dict[str, Any]]) -> Outgoing:
    return _msg(f"{prefix}/plans/latest", {"plan_id": e.plan_id, "status": e.status,
                                           "created_at": to_rfc3339(e.at), "summary": e.summary,
                                           "sessions": sessions}, 1, retain=True)


def gateway_status_topic(prefix: str) -> str:
    return f"{prefix}/gateway/status"


def gateway_status(prefix: str, online: bool, reason: str, ts: str | None = None) -> Outgoing:
    """Whether the gateway is there to keep the retained topics true. A station's retained
    ``connected: true`` outlives a gateway that crashed or lost its link: this topic (the bridge's
    will when the link is lost without a goodbye) tells a consumer to read those as stale."""
    body: dict[str, Any] = {"online": online, "reason": reason}
    if ts is not None:
        body["ts"] = ts
    return _msg(gateway_status_topic(prefix), body, 1, retain=True)
