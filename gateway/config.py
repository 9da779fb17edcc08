"""Typed settings: one object, environment prefix ``GATEWAY_``, CLI flags override env.

Every fixed number (timeouts, limits, penalties) is a named setting with its unit in its name.
An optional TOML site file (``--config site.toml``) supplies the site's limits and tariff; it is
checked as strictly as the REST API checks the same inputs (unknown keys, non-finite numbers and
out-of-range values are errors naming the file and the key), since a typo there would otherwise
plan the site with a default limit.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway import sitetime
from gateway.api.schemas import (
    PRICE_MAX_PER_KWH,
    TOU_PERIODS_MAX,
    AwareDateTime,
    DemandChargePerKw,
    HourOfDay,
    PricePerKwh,
    SiteName,
    SitePowerLimitKw,
    check_tou_periods,
    check_tou_window,
)
from gateway.db.engine import normalize_url
from gateway.domain import SiteLimits, Tariff, TouPeriod
from gateway.logs import log_level_name

# Charge and discharge efficiency assumed between the EVSE's meter and the battery: no EV tells
# its own, so live planning and the evaluator's online policies both count with this.
EV_EFFICIENCY = 0.92
# Mobility as a price: what a kWh a driver asked for and did not get costs, in the live plan, the
# evaluator's score and the demo's like-for-like total alike.
UNMET_PENALTY_PER_KWH = 5.0

PORT_MAX = 65535
NODE_ID_MAX = 64  # stations.connected_node
# The stations.id column (and every station_id column) is varchar(48): a longer id admitted at the
# WebSocket would fail at its first write instead of being refused at the door.
STATION_ID_COLUMN_LENGTH = 48


class _SiteFileModel(BaseModel):
    # As strict as the REST bodies: a misspelt key would silently leave the default in force,
    # a quoted number or a boolean is a mistake, and NaN or an infinity is no limit or price.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TouPeriodConfig(_SiteFileModel):
    """One time-of-use window, bounded as ``PUT /api/v1/tariff`` bounds its periods."""

    start_hour: HourOfDay
    end_hour: HourOfDay
    import_price: PricePerKwh
    export_price: PricePerKwh

    @model_validator(mode="after")
    def _non_empty(self) -> TouPeriodConfig:
        check_tou_window(self.start_hour, self.end_hour)
        return self


class SiteConfig(_SiteFileModel):
    """The site the scheduler plans: limits and tariff. Operators change these over REST too."""

    name: SiteName = "site"
    # The site's IANA time zone: the tariff's hours, the billing month's midnight and the hours of
    # the day arrivals and dwells are learned by are on this clock (gateway/sitetime.py).
    timezone: str = "UTC"
    import_limit_kw: SitePowerLimitKw = 500.0
    export_limit_kw: SitePowerLimitKw = 200.0
    demand_charge_per_kw: DemandChargePerKw = 15.0
    # The demand charge is on the billing period's highest average import over any demand interval;
    # periods are calendar months starting on this day at 00:00 site time (gateway/billing.py).
    billing_day: int = Field(default=1, ge=1, le=28)
    demand_interval_min: float = Field(default=15.0, gt=0.0, le=60.0)
    # A cost per kWh cycled through a battery: never a gain.
    wear_cost_per_kwh: float = Field(default=0.03, ge=0, le=PRICE_MAX_PER_KWH)
    tou: list[TouPeriodConfig] = Field(
        max_length=TOU_PERIODS_MAX,
        default_factory=lambda: [
            TouPeriodConfig(start_hour=0, end_hour=8, import_price=0.12, export_price=0.04),
            TouPeriodConfig(start_hour=8, end_hour=16, import_price=0.20, export_price=0.06),
            TouPeriodConfig(start_hour=16, end_hour=21, import_price=0.38, export_price=0.12),
            TouPeriodConfig(start_hour=21, end_hour=24, import_price=0.16, export_price=0.05),
        ]
    )

    @model_validator(mode="after")
    def _tou_apart(self) -> SiteConfig:
        check_tou_periods([(p.start_hour, p.end_hour) for p in self.tou])
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        sitetime.zone(v)  # raises with the reason
        return v


    def limits(self) -> SiteLimits:
        return SiteLimits(self.import_limit_kw, self.export_limit_kw)

    def tariff(self) -> Tariff:
        return Tariff(
            periods=tuple(TouPeriod(**p.model_dump()) for p in self.tou),
            demand_charge_per_kw=self.demand_charge_per_kw,
            timezone=self.timezone,
        )


def env_setting(name: str) -> str | None:
    """The ``GATEWAY_<NAME>`` variable as :class:`Settings` reads it (any case), for commands
    that take one setting without building them all."""
    want = f"GATEWAY_{name}".upper()
    return next((v for k, v in os.environ.items() if k.upper() == want), None)


class Settings(BaseSettings):
    # No inf or nan anywhere: an infinite back-off or period waits for good, a nan compares false
    # with every bound.
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", allow_inf_nan=False)

    # Wiring
    database_url: str | None = None
    mqtt_url: str | None = None
    # No MQTT wildcard (+, #) or NUL in it: the broker refuses publishing to such a topic, and the
    # bridge would reconnect for ever. Nor a leading $: topics so named are the broker's own
    # (MQTT 5 §4.7.2); Mosquitto acknowledged publishes under $SYS and kept none of them, and "#"
    # subscribers never see a $ topic.
    mqtt_topic_prefix: str = Field(default="gateway", min_length=1, max_length=200,
                                   pattern=r"^[^+#$\x00][^+#\x00]*$")
    mqtt_buffer_messages_max: int = Field(default=10_000, ge=1)
    # Above 0 (and min at most max): a back-off of 0 reconnected in a tight loop while the broker was away.
    mqtt_reconnect_min_s: float = Field(default=0.5, gt=0.0)
    mqtt_reconnect_max_s: float = Field(default=10.0, gt=0.0)
    api_key: str | None = None
    # This process among the gateways sharing a database: the node a station's connected flag
    # names, so a node clears only its own stations' flags (at start, those a crash left set).
    # The host name by default; nodes sharing a host (or a host name) need one each.
    node_id: str = Field(default_factory=lambda: socket.gethostname()[:NODE_ID_MAX] or "gateway",
                         min_length=1, max_length=NODE_ID_MAX)
    ocpp_host: str = "0.0.0.0"
    # 0: any free port (tests, the demo). Out of range, the bind failed only after the scheduler
    # and the database were up.
    ocpp_port: int = Field(default=9000, ge=0, le=PORT_MAX)
    api_host: str = "0.0.0.0"
    api_port: int = Field(default=8000, ge=0, le=PORT_MAX)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # CA bundle (PEM) that signs station certificates: security profile 3 (TLS client certificates)
    tls_client_ca: Path | None = None
    config: Path | None = None
    migrate: bool = False
    log_json: bool = False
    log_level: str = "INFO"

    # Time (simulation): a scale of 0, below or not finite stops or reverses the clock.
    # At most a million: a day in a tenth of a second already; 1e12 ran the clock past year 9999
    # within a second.
    time_scale: float = Field(default=1.0, gt=0.0, le=1e6)
    # RFC 3339 with an offset, as REST and MQTT take times: a local wall-clock time without one
    # was read as UTC, shifted by the site's offset.
    sim_start: AwareDateTime | None = None

    # OCPP transport
    allow_unknown_stations: bool = False
    known_tokens_only: bool = False
    # Authorize while the database is away answers a token's last known status (C01) only if the
    # database gave it within this many seconds: a token blocked during a long outage is not
    # accepted on an answer from before it.
    authorize_stale_max_s: float = Field(default=3600.0, ge=0)
    call_timeout_s: float = Field(default=30.0, gt=0.0)
    heartbeat_interval_s: int = Field(default=300, ge=1)
    max_frame_bytes: int = Field(default=65536, ge=1024)  # a BootNotification is several hundred bytes
    max_station_id_length: int = Field(default=STATION_ID_COLUMN_LENGTH, ge=1, le=STATION_ID_COLUMN_LENGTH)
    auth_failures_per_minute_max: int = Field(default=10, ge=1)
    auth_lockout_s: float = Field(default=60.0, ge=0.0)
    credential_cache_s: float = Field(default=300.0, ge=0.0)
    # While the database is away, a station logs in against its registration as read within
    # this many seconds (its password still checked), so a dropped link can come back.
    credentials_stale_max_s: float = Field(default=3600.0, ge=0)
    handshake_timeout_s: float = Field(default=10.0, gt=0.0)
    shutdown_drain_s: float = Field(default=8.0, ge=0.0)
    # None (or an empty value, "none", "off", 0) turns WebSocket pings off; 0 passed to the
    # transport as both interval and timeout closed every station at once (1011).
    ws_ping_interval_s: float | None = Field(default=60.0, gt=0.0)

    # Storage
    db_pool_size: int = Field(default=20, ge=1)  # plus as many again on overflow; Postgres allows 100 by default
    meter_buffer_rows_max: int = Field(default=200_000, ge=1)
    meter_flush_rows: int = Field(default=2_000, ge=1)
    meter_flush_interval_s: float = Field(default=0.5, gt=0.0)
    db_retry_interval_s: float = Field(default=1.0, gt=0.0)

    # Scheduler
    scheduler_enabled: bool = True
    replan_period_s: float = Field(default=300.0, gt=0.0)
    replan_debounce_s: float = Field(default=2.0, ge=0.0)
    solver_time_limit_s: float = Field(default=60.0, gt=0.0)
    horizon_h: float = Field(default=24.0, gt=0.0)
    default_dwell_h: float = Field(default=8.0, gt=0.0)
    default_energy_kwh: float = Field(default=20.0, ge=0.0)
    # Mobility as a price: what a kWh a driver asked for and did not get costs the plan (the same
    # value the offline evaluator prices shortfalls at).
    unmet_energy_penalty_per_kwh: float = Field(default=UNMET_PENALTY_PER_KWH, ge=0.0)
    safe_limit_kw: float = Field(default=3.7, ge=0.0)  # constant limit sent when a planned profile is refused
    # "highs" (direct) or "cvxpy" (DPP); auto = highs. Only the names Planner takes: a typo used
    # to be planned with highs without a word.
    scheduler_backend: Literal["auto", "highs", "cvxpy"] = "auto"
    profile_stack_level: int = Field(default=1, ge=0)  # OCPP stackLevel is >= 0
    max_profile_periods: int = Field(default=24, ge=1)  # OCPP PeriodsPerSchedule most stations accept
    # A period that raises an EVSE's limit starts this long (simulated seconds) after the plan's
    # boundary, one that lowers it on time: stations switch a little apart (clocks, their own
    # control loops), and a rise here meeting a late fall there would pass the site limit. At
    # least 0.1 s of real time when the clock is scaled (simulations).
    profile_rise_delay_s: float = Field(default=10.0, ge=0.0)
    # At least one: 0 made every push wait for good (asyncio.Semaphore(0)).
    profile_push_concurrency: int = Field(default=100, ge=1)
    # Plan discharge only inside grid-event windows (export requests). Arbitrage on time-of-use
    # spreads against uncertain departures drained parked cars in the 50-station demo.
    discharge_only_in_grid_events: bool = True
    # Plan discharge for EVs that did not declare a discharge power too (bidirectional DC chargers
    # whose V2G cars speak CHAdeMO, not ISO 15118, and tell the station nothing it passes on):
    # off, only an EV that declared one is discharged (scheduler/live_inputs.session_view).
    discharge_undeclared_evs: bool = False
    # Keep room (and the peak) in every plan for the EVs expected to plug in over the horizon, as
    # counted per hour of the day from the sessions seen here (gateway/scheduler/arrivals.py).
    anticipate_arrivals: bool = True
    # Every plan keeps room under the import limit for this many EVs plugging into idle EVSEs at
    # once (each draws its TxDefaultProfile until the re-plan its plug-in triggers pushes its
    # plan, seconds later). Room for every idle EVSE, held over the whole horizon, left 6-9 % of the
    # deliverable energy short on a 100-EVSE workplace and a 50-EVSE depot (docs/benchmarks-
    # scheduler.md, "Room for plug-ins"); more plug-ins than this within one re-plan's latency can
    # pass the limit by a default each until it lands.
    plug_in_reserve_evses: int = Field(default=4, ge=0)
    # Charge and discharge efficiency assumed between meter and battery.
    ev_efficiency: float = Field(default=EV_EFFICIENCY, gt=0.0, le=1.0)
    # The SoC at which an EV whose battery the gateway sees (ISO 15118: SoC and capacity) is
    # planned to start its constant-voltage taper, linear to nothing at 100 % (1.0: planned at
    # full power to the top). A plan that ignores the taper counts on energy the battery will not
    # take and is left short near the top (docs/benchmarks-scheduler.md, "The battery's taper").
    battery_taper_soc: float = Field(default=0.8, ge=0.0, le=1.0)
    default_ev_room_kwh: float = Field(default=60.0, gt=0.0)  # battery room assumed when an EV does not tell its SoC
    # Measured power above the sent limit by more than this counts as not following it.
    noncompliance_tolerance_kw: float = Field(default=1.0, ge=0.0)

    site: SiteConfig = Field(default_factory=SiteConfig)

    # Checked when the settings are read, so a typo in a flag or GATEWAY_* variable is one clear
    # error before anything starts, not a traceback from deep inside a running gateway.

    @field_validator("ws_ping_interval_s", mode="before")
    @classmethod
    def _ping_off(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null", "off")):
            return None
        try:
            return None if float(v) == 0 else v
        except (TypeError, ValueError):
            return v  # the field's own parser names what is wrong

    @field_validator("database_url", "mqtt_url", "config", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        # GATEWAY_MQTT_URL= (set but empty) has always meant "off", as an unset one does; an
        # empty GATEWAY_CONFIG was read as the site file "." (a directory).
        return None if v == "" else v

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: str | None) -> str | None:
        if v is not None:
            normalize_url(v)  # the engine's own rule: raises naming the form it takes
        return v

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str | None) -> str | None:
        if v is not None:
            # The bridge's own parser, so what passes here is what it connects to. Imported here:
            # the bridge pulls in the MQTT client and much of the gateway.
            from gateway.bus.mqtt import broker_address

            broker_address(v)
        return v

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _printable_prefix(cls, v: str) -> str:
        # A control character or noncharacter in a topic: Mosquitto drops the connection on every
        # publish (MQTT 5 §1.5.4), and the bridge would reconnect for ever (topics.segment).
        if not all(c.isprintable() for c in v):
            raise ValueError("must be printable text (no control characters)")
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        return log_level_name(v)


    @model_validator(mode="after")
    def _reconnect_order(self) -> Settings:
        if self.mqtt_reconnect_min_s > self.mqtt_reconnect_max_s:
            raise ValueError(f"{setting_name('mqtt_reconnect_min_s')} ({self.mqtt_reconnect_min_s:g}) is above "
                             f"{setting_name('mqtt_reconnect_max_s')} ({self.mqtt_reconnect_max_s:g})")
        return self

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        # Half a TLS set-up used to be dropped without a word and the gateway served plain ws
        # (station passwords in clear) to an operator who had asked for wss.
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            raise ValueError(f"{setting_name(given)} is set but {setting_name(missing)} is not: TLS needs both")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(f"{setting_name('tls_client_ca')} needs a server certificate too: "
                             f"{setting_name('tls_cert')} and {setting_name('tls_key')}")
        return self

    def with_site_file(self) -> Settings:
        """Return a copy with the TOML site file (if any) applied to ``site``.

        Raises :class:`SiteFileError` naming the file and every offending key."""
        if self.config is None:
            return self
        return self.model_copy(update={"site": load_site_file(Path(self.config))})


def setting_name(name: str) -> str:
    """How an operator sets the setting ``name``: its flag and its environment variable."""
    return f"--{name.replace('_', '-')} (GATEWAY_{name.upper()})"


class SiteFileError(ValueError):
    """The TOML site file cannot be read or holds a key or value the gateway refuses."""


def load_site_file(path: Path) -> SiteConfig:
    """The site in ``path``: its keys under ``[site]`` (or at the top level when there is no
    ``[site]`` table)."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SiteFileError(f"{path}: {e}") from e
    prefix: tuple[str | int, ...] = ()
    if "site" in data:
        # Everything the file says belongs under [site]: another table is a typo, not a comment.
        others = sorted(k for k in data if k != "site")
        if others:
            raise SiteFileError(f"{path}: {others[0]}: unknown key (the site's settings go under [site])")
        data, prefix = data["site"], ("site",)
        if not isinstance(data, dict):
            raise SiteFileError(f"{path}: site: must be a table")
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as e:
        problems = [f"{path}: {_key((*prefix, *err['loc']))}: "
                    + ("unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, "))
                    for err in e.errors()]
        raise SiteFileError("\n".join(problems)) from None


def _key(loc: tuple[str | int, ...]) -> str:
    """A pydantic location as the file spells it: ``site.tou[1].start_hour``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
