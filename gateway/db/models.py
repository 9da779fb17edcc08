"""SQLAlchemy 2 models. The schema changes only through Alembic (migrations/); a test checks
that these models and the migrated DDL agree (docs/reliability.md A2)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TS = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB, datetime: TS}


class Station(Base):
    __tablename__ = "stations"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    security_profile: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    discharge_dialect: Mapped[str] = mapped_column(String(32), default="negative_limit",
                                                   server_default="negative_limit")
    # Plan EVs that did not declare a discharge power to discharge here (None: the site's
    # Settings.discharge_undeclared_evs; migration 0008).
    discharge_undeclared_evs: Mapped[bool | None] = mapped_column(Boolean)
    vendor: Mapped[str | None] = mapped_column(String(50))
    model: Mapped[str | None] = mapped_column(String(50))
    serial_number: Mapped[str | None] = mapped_column(String(25))
    firmware_version: Mapped[str | None] = mapped_column(String(50))
    boot_reason: Mapped[str | None] = mapped_column(String(32))
    boot_status: Mapped[str] = mapped_column(String(16), default="Accepted", server_default="Accepted")
    firmware_status: Mapped[str | None] = mapped_column(String(40))
    registered_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    last_boot_at: Mapped[datetime | None] = mapped_column(TS)
    last_seen_at: Mapped[datetime | None] = mapped_column(TS)
    connected: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    connected_node: Mapped[str | None] = mapped_column(String(64))  # the node holding the connection
    # When that connection (or the last one, once disconnected) was opened, on the wall clock the
    # nodes share: orders the writes of connections through different nodes (migration 0015).
    connected_since: Mapped[datetime | None] = mapped_column(TS)
    # The TxDefaultProfile limit (kW) the station last accepted (migration 0012).
    default_limit_kw: Mapped[float | None] = mapped_column(Float)
    # Its last definite answer to one: Accepted, Rejected or CallErrorReceived (migration 0021).
    default_answer: Mapped[str | None] = mapped_column(String(32))


class Evse(Base):
    __tablename__ = "evses"

    station_id: Mapped[str] = mapped_column(
        String(48), ForeignKey("stations.id", ondelete="CASCADE"), primary_key=True
    )
    evse_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    max_charge_kw: Mapped[float] = mapped_column(Float, default=11.0, server_default="11")
    max_discharge_kw: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    phases: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    bidirectional: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")


class Connector(Base):
    __tablename__ = "connectors"
    __table_args__ = (
        ForeignKeyConstraint(["station_id", "evse_id"], ["evses.station_id", "evses.evse_id"],
                             ondelete="CASCADE"),
    )

    station_id: Mapped[str] = mapped_column(String(48), primary_key=True)
    evse_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    connector_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    status_at: Mapped[datetime] = mapped_column(TS)


class StatusHistory(Base):
    __tablename__ = "status_history"
    __table_args__ = (Index(None, "station_id", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(48))
    evse_id: Mapped[int] = mapped_column(Integer)
    connector_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    ts: Mapped[datetime] = mapped_column(TS)
    received_at: Mapped[datetime] = mapped_column(TS)


class TelemetryBatch(Base):
    """A telemetry batch written (migration 0019): a batch whose commit's answer was lost (a
    connection reset after COMMIT, a timeout) is not written twice when tried again."""

    __tablename__ = "telemetry_batches"
    __table_args__ = (Index(None, "written_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    written_at: Mapped[datetime] = mapped_column(TS, nullable=False)


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        UniqueConstraint("station_id", "transaction_id"),
        Index(None, "ended_at"),
        # An idToken is case-insensitive (OCPP 2.0.1 IdTokenType): looked up by its lower case.
        Index("ix_transactions_id_token_lower", text("lower(id_token)")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(48), ForeignKey("stations.id", ondelete="CASCADE"))
    transaction_id: Mapped[str] = mapped_column(String(36))
    evse_id: Mapped[int | None] = mapped_column(Integer)
    connector_id: Mapped[int | None] = mapped_column(Integer)
    id_token: Mapped[str | None] = mapped_column(String(36))
    id_token_type: Mapped[str | None] = mapped_column(String(20))
    # The seqNo of the event whose token the session keeps: its earliest one with a token (0010).
    id_token_seq_no: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime | None] = mapped_column(TS)
    ended_at: Mapped[datetime | None] = mapped_column(TS)
    stopped_reason: Mapped[str | None] = mapped_column(String(32))
    charging_state: Mapped[str | None] = mapped_column(String(20))
    meter_start_import_wh: Mapped[float | None] = mapped_column(Float)
    meter_start_export_wh: Mapped[float | None] = mapped_column(Float)
    # The seqNo of the event whose reading set each start (0022): only an earlier event's lower
    # reading moves it (one sent late); a later one's is a glitch or a meter reset.
    meter_start_import_seq: Mapped[int | None] = mapped_column(BigInteger)
    meter_start_export_seq: Mapped[int | None] = mapped_column(BigInteger)
    energy_in_kwh: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    energy_out_kwh: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    last_power_kw: Mapped[float | None] = mapped_column(Float)
    last_soc: Mapped[float | None] = mapped_column(Float)
    # The EV battery's energy at plug-in on its own scale, the first value pinned (migration 0007):
    # a restarted gateway counts the energy still wanted from the same point.
    battery_start_kwh: Mapped[float | None] = mapped_column(Float)
    max_seq_no: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    updated_at: Mapped[datetime] = mapped_column(TS)


class TransactionEvent(Base):
    __tablename__ = "transaction_events"
    # D1: one row per (station, transactionId, seqNo), whatever the message id was.
    __table_args__ = (UniqueConstraint("station_id", "transaction_id", "seq_no"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(48))
    transaction_id: Mapped[str] = mapped_column(String(36))
    seq_no: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(10))
    trigger_reason: Mapped[str] = mapped_column(String(40))
    ts: Mapped[datetime] = mapped_column(TS)
    offline: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    received_at: Mapped[datetime] = mapped_column(TS)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)


class TransactionSeqGap(Base):
    """D2: a seqNo that was skipped; closed when the late event arrives."""

    __tablename__ = "transaction_seq_gaps"
    __table_args__ = (UniqueConstraint("station_id", "transaction_id", "seq_no"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(48))
    transaction_id: Mapped[str] = mapped_column(String(36))
    seq_no: Mapped[int] = mapped_column(Integer)
    detected_at: Mapped[datetime] = mapped_column(TS)
    closed_at: Mapped[datetime | None] = mapped_column(TS)


class MeterValue(Base):
    __tablename__ = "meter_values"
    __table_args__ = (
        Index(None, "station_id", "ts"), Index(None, "transaction_id", "ts"),
        # The highest SoC of a transaction in one index lookup (TransactionRepository.active, migration 0009).
        Index("ix_meter_values_soc_high", "station_id", "transaction_id", "value",
              postgresql_where=text("measurand = 'SoC'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    ts: Mapped[datetime] = mapped_column(TS)
    station_id: Mapped[str] = mapped_column(String(48))
    evse_id: Mapped[int] = mapped_column(Integer)
    transaction_id: Mapped[str | None] = mapped_column(String(36))
    measurand: Mapped[str] = mapped_column(String(50))
    phase: Mapped[str | None] = mapped_column(String(8))
    context: Mapped[str | None] = mapped_column(String(24))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str | None] = mapped_column(String(20))
    location: Mapped[str | None] = mapped_column(String(8))  # LocationEnumType; NULL: Outlet, said or not (0017)


class EvNeed(Base):
    __tablename__ = "ev_needs"
    __table_args__ = (Index(None, "station_id", "evse_id", "received_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(48))
    evse_id: Mapped[int] = mapped_column(Integer)
    transaction_id: Mapped[str | None] = mapped_column(String(36))
    source: Mapped[str] = mapped_column(String(16))
    departure_time: Mapped[datetime | None] = mapped_column(TS)
    energy_kwh: Mapped[float | None] = mapped_column(Float)
    capacity_kwh: Mapped[float | None] = mapped_column(Float)
    soc: Mapped[float | None] = mapped_column(Float)
    target_soc: Mapped[float | None] = mapped_column(Float)
    min_soc: Mapped[float | None] = mapped_column(Float)
    ev_max_charge_kw: Mapped[float | None] = mapped_column(Float)
    ev_max_discharge_kw: Mapped[float | None] = mapped_column(Float)
    max_schedule_tuples: Mapped[int | None] = mapped_column(Integer)  # migration 0018
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(TS)
    # Energy into the battery when the needs arrived (energy_kwh counts from it; migration 0006).
    baseline_kwh: Mapped[float | None] = mapped_column(Float)


class Preference(Base):
    """A driver's override, with who and when; the newest row per transaction is in force."""

    __tablename__ = "preferences"
    __table_args__ = (Index(None, "station_id", "transaction_id", "set_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(48))
    transaction_id: Mapped[str] = mapped_column(String(36))
    departure_time: Mapped[datetime | None] = mapped_column(TS)
    energy_kwh: Mapped[float | None] = mapped_column(Float)
    target_soc: Mapped[float | None] = mapped_column(Float)
    reserve_soc: Mapped[float | None] = mapped_column(Float)
    allow_discharge: Mapped[bool | None] = mapped_column(Boolean)
    mode: Mapped[str | None] = mapped_column(String(16))
    set_by: Mapped[str] = mapped_column(String(80))
    set_at: Mapped[datetime] = mapped_column(TS)


class PlanRecord(Base):
    __tablename__ = "plans"
    __table_args__ = (Index(None, "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TS)
    trigger: Mapped[str] = mapped_column(String(40))
    inputs_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(40))
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    objective: Mapped[float | None] = mapped_column(Float)
    terms: Mapped[dict[str, Any]] = mapped_column(JSONB)
    solve_s: Mapped[float] = mapped_column(Float)
    horizon_start: Mapped[datetime] = mapped_column(TS)
    horizon_end: Mapped[datetime] = mapped_column(TS)
    sessions: Mapped[dict[str, Any]] = mapped_column(JSONB)


class ProfileSent(Base):
    __tablename__ = "profiles_sent"
    __table_args__ = (Index(None, "station_id", "sent_at"), Index(None, "transaction_id"), Index(None, "plan_id"))

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    plan_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("plans.id", ondelete="SET NULL"))
    station_id: Mapped[str] = mapped_column(String(48))
    evse_id: Mapped[int] = mapped_column(Integer)
    transaction_id: Mapped[str | None] = mapped_column(String(36))
    profile_id: Mapped[int] = mapped_column(Integer)
    stack_level: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(40))
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    sent_at: Mapped[datetime] = mapped_column(TS)


class GridEventRecord(Base):
    __tablename__ = "grid_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    start: Mapped[datetime] = mapped_column(TS)
    end: Mapped[datetime] = mapped_column(TS)
    kind: Mapped[str] = mapped_column(String(20))
    payment_per_kwh: Mapped[float] = mapped_column(Float, default=0.0)
    cap_kw: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(TS)
    cancelled_at: Mapped[datetime | None] = mapped_column(TS)


class TariffRecord(Base):
    __tablename__ = "tariffs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TS)
    source: Mapped[str] = mapped_column(String(40))
    demand_charge_per_kw: Mapped[float] = mapped_column(Float)
    periods: Mapped[dict[str, Any]] = mapped_column(JSONB)  # {"periods": [...]} (TOU) and overrides


class SiteSetting(Base):
    """Operator-set site values (limits, building load forecast), newest wins."""

    __tablename__ = "site_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(TS)
    updated_by: Mapped[str] = mapped_column(String(80))


class BillingPeak(Base):
    """The highest demand-interval average import of a site's billing period (gateway/billing.py);
    only ever raised, so nodes that write it at once keep the highest."""

    __tablename__ = "billing_peaks"

    site: Mapped[str] = mapped_column(String(80), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(TS, primary_key=True)
    peak_kw: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(TS)


class BuildingReading(Base):
    """The building's load in one five-minute slot (the last reading the scheduler planned with in
    it): what the learned building profile (gateway/scheduler/building.py) is rebuilt from at start,
    so a restart or another node does not forget weeks of readings."""

    __tablename__ = "building_readings"

    site: Mapped[str] = mapped_column(String(80), primary_key=True)
    slot_start: Mapped[datetime] = mapped_column(TS, primary_key=True)
    power_kw: Mapped[float] = mapped_column(Float)


class SecurityEventRecord(Base):
    __tablename__ = "security_events"
    __table_args__ = (Index(None, "ts"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    station_id: Mapped[str | None] = mapped_column(String(48))
    kind: Mapped[str] = mapped_column(String(50))
    detail: Mapped[str] = mapped_column(Text)
    remote_address: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # "gateway" or "station"
    ts: Mapped[datetime] = mapped_column(TS)


class StationMessage(Base):
    """Station notifications kept as received (NotifyReport, NotifyEvent, NotifyChargingLimit, ...)."""

    __tablename__ = "station_messages"
    __table_args__ = (Index(None, "station_id", "action", "received_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(48))
    action: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(TS)


class IdTokenRecord(Base):
    __tablename__ = "id_tokens"
    __table_args__ = (Index("ix_id_tokens_id_token_lower", text("lower(id_token)")),)

    id_token: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="Accepted")
    created_at: Mapped[datetime] = mapped_column(TS)


class DriverToken(Base):
    """An API token issued by the operator to a driver app, bound to one idToken."""

    __tablename__ = "driver_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    id_token: Mapped[str] = mapped_column(String(36))
    label: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS)
