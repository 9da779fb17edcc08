"""Prometheus metrics, all in one registry so ``/metrics`` shows exactly the gateway's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

STATIONS_CONNECTED = Gauge("gateway_stations_connected", "Stations with a live OCPP connection",
                           registry=REGISTRY)
MESSAGES = Counter("gateway_ocpp_messages_total", "OCPP CALLs received from stations",
                   ["action", "outcome"], registry=REGISTRY)
HANDLER_SECONDS = Histogram("gateway_ocpp_handler_seconds", "Time to answer a station CALL",
                            ["action"], registry=REGISTRY,
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30))
CALLS_SENT = Counter("gateway_ocpp_calls_sent_total", "CALLs sent to stations", ["action", "outcome"],
                     registry=REGISTRY)
CALL_SECONDS = Histogram("gateway_ocpp_call_seconds", "Round trip of CALLs sent to stations", ["action"],
                         registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
DB_WRITE_SECONDS = Histogram("gateway_db_write_seconds", "Database write latency", ["kind"],
                             registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5))
DB_RETRIES = Counter("gateway_db_retries_total", "Writes retried because the database was away", ["kind"],
                     registry=REGISTRY)
BUFFERED_ROWS = Gauge("gateway_db_buffered_rows", "Telemetry rows waiting to be written", ["table"],
                      registry=REGISTRY)
DROPPED_ROWS = Counter("gateway_db_dropped_rows_total", "Telemetry rows dropped because the buffer was full",
                       ["table"], registry=REGISTRY)
SOLVES = Counter("gateway_scheduler_solves_total", "Scheduler solves", ["status", "trigger"],
                 registry=REGISTRY)
SOLVE_SECONDS = Histogram("gateway_scheduler_solve_seconds", "Scheduler solve time", registry=REGISTRY,
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
PROFILES = Counter("gateway_profiles_total", "Charging profiles sent", ["outcome"], registry=REGISTRY)
MQTT_CONNECTED = Gauge("gateway_mqtt_connected", "1 when the MQTT bridge is connected", registry=REGISTRY)
REGISTRATIONS_LISTENING = Gauge(
    "gateway_registration_changes_listening",
    "1 while the gateway hears registration changes from other processes (Postgres LISTEN)", registry=REGISTRY)
MQTT_BUFFERED = Gauge("gateway_mqtt_buffered_messages", "MQTT messages waiting to be published",
                      registry=REGISTRY)
MQTT_DROPPED = Counter("gateway_mqtt_dropped_total", "MQTT messages dropped because the buffer was full",
                       registry=REGISTRY)
SECURITY_EVENTS = Counter("gateway_security_events_total", "Security events recorded", ["kind"],
                          registry=REGISTRY)
EVENTS_DROPPED = Gauge("gateway_event_subscriber_dropped", "Domain events a slow subscriber lost",
                       ["subscriber"], registry=REGISTRY)
MQTT_PUBLISHED = Counter("gateway_mqtt_published_total", "MQTT messages the broker accepted",
                         registry=REGISTRY)
MQTT_RECEIVED = Counter("gateway_mqtt_received_total", "MQTT input messages applied", ["input"],
                        registry=REGISTRY)
MQTT_INVALID = Counter("gateway_mqtt_invalid_total",
                       "MQTT input messages refused (bad topic or payload, stale, or a cancelled grid event)",
                       ["input"], registry=REGISTRY)
# Apart from MQTT_INVALID: a valid input the gateway failed to store (database away) is the
# gateway's fault, not the sender's, and must not hide among bad messages.
MQTT_APPLY_FAILED = Counter("gateway_mqtt_apply_failed_total",
                            "Valid MQTT input messages that could not be applied (storing them failed)",
                            ["input"], registry=REGISTRY)
MQTT_REPLAYED = Counter("gateway_mqtt_replayed_total",
                        "Retained MQTT inputs skipped as the message applied last on their topic",
                        ["input"], registry=REGISTRY)
MQTT_RECONNECTS = Counter("gateway_mqtt_connects_total", "MQTT connection attempts by outcome", ["outcome"],
                          registry=REGISTRY)
EVENT_QUEUE_DEPTH = Gauge("gateway_event_queue_depth", "Domain events waiting in a subscriber's queue",
                          ["subscriber"], registry=REGISTRY)
OUTGOING_QUEUED = Gauge("gateway_ocpp_outgoing_calls", "CALLs to stations queued or in flight (all stations)",
                        registry=REGISTRY)
