"""Settings an operator can get wrong are refused when they are read, naming the setting, not
deep inside a running gateway (or never: a typo that silently picks a default)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import Settings
from gateway.ocpp.server import build_ssl_context


@pytest.mark.parametrize(("overrides", "field"), [
    ({"ocpp_port": 70000}, "ocpp_port"),
    ({"api_port": -1}, "api_port"),
    ({"time_scale": 0.0}, "time_scale"),
    ({"time_scale": math.nan}, "time_scale"),
    ({"time_scale": math.inf}, "time_scale"),
    ({"sim_start": "yesterday"}, "sim_start"),
    ({"database_url": "mysql://u@h/db"}, "database_url"),
    ({"log_level": "foo"}, "log_level"),
    ({"max_station_id_length": 60}, "max_station_id_length"),  # stations.id is varchar(48)
    ({"max_station_id_length": 0}, "max_station_id_length"),
    ({"scheduler_backend": "hihgs"}, "scheduler_backend"),
    ({"mqtt_url": "http://broker:1883"}, "mqtt_url"),
    ({"mqtt_topic_prefix": "site/+/gw"}, "mqtt_topic_prefix"),
    ({"mqtt_topic_prefix": "site/#"}, "mqtt_topic_prefix"),
    ({"mqtt_buffer_messages_max": 0}, "mqtt_buffer_messages_max"),
    ({"mqtt_url": "mqtt://"}, "mqtt_url"),
    ({"mqtt_url": "mqtt://broker:99999"}, "mqtt_url"),
    ({"call_timeout_s": 0.0}, "call_timeout_s"),
    ({"heartbeat_interval_s": 0}, "heartbeat_interval_s"),
    # Values that passed and broke at run time: 0 pushes at once waited for good, a back-off of 0
    # reconnected in a tight loop, and the rest built empty grids or divided by nothing.
    ({"profile_push_concurrency": 0}, "profile_push_concurrency"),
    ({"horizon_h": 0}, "horizon_h"),
    ({"ev_efficiency": 0}, "ev_efficiency"),
    ({"ev_efficiency": 1.5}, "ev_efficiency"),
    ({"solver_time_limit_s": -1}, "solver_time_limit_s"),
    ({"max_profile_periods": 0}, "max_profile_periods"),
    ({"db_pool_size": -3}, "db_pool_size"),
    ({"meter_flush_rows": 0}, "meter_flush_rows"),
    ({"mqtt_reconnect_min_s": 0}, "mqtt_reconnect_min_s"),
    ({"mqtt_reconnect_max_s": -1}, "mqtt_reconnect_max_s"),
    ({"mqtt_topic_prefix": "gw\x01"}, "mqtt_topic_prefix"),  # Mosquitto drops such a publish
    ({"mqtt_topic_prefix": "gw\uffff"}, "mqtt_topic_prefix"),
    ({"mqtt_url": "mqtt://broker:0"}, "mqtt_url"),
    # A time without its offset was read as UTC: a local wall-clock time moved by the site's offset.
    ({"sim_start": "2026-01-01T08:00:00"}, "sim_start"),
    ({"sim_start": "2026-01-01"}, "sim_start"),
    ({"sim_start": "20260101T080000Z"}, "sim_start"),
    # Accepted and then broken at run time: an infinite back-off waited for days, a negative retry
    # or flush interval spun, a $ prefix was acknowledged by the broker and kept nowhere.
    ({"mqtt_reconnect_max_s": math.inf}, "mqtt_reconnect_max_s"),
    ({"replan_period_s": math.inf}, "replan_period_s"),
    ({"shutdown_drain_s": math.nan}, "shutdown_drain_s"),
    ({"db_retry_interval_s": -1}, "db_retry_interval_s"),
    ({"meter_flush_interval_s": 0}, "meter_flush_interval_s"),
    ({"handshake_timeout_s": -5}, "handshake_timeout_s"),
    ({"max_frame_bytes": -1}, "max_frame_bytes"),
    ({"meter_buffer_rows_max": 0}, "meter_buffer_rows_max"),
    ({"safe_limit_kw": -3}, "safe_limit_kw"),
    ({"time_scale": 1e12}, "time_scale"),
    ({"ws_ping_interval_s": -5}, "ws_ping_interval_s"),
    ({"mqtt_topic_prefix": "$SYS/gateway"}, "mqtt_topic_prefix"),
])
def test_a_bad_setting_is_refused_naming_it(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**overrides)
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_a_bad_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_OCPP_PORT", "abc")
    with pytest.raises(ValidationError):
        Settings()


def test_good_settings_are_read_as_meant() -> None:
    given: dict[str, Any] = {"log_level": "debug", "sim_start": "2026-07-01T08:00:00Z", "mqtt_url": "mqtt://broker",
                             "scheduler_backend": "cvxpy", "database_url": "postgres://u@h/db", "ocpp_port": 0,
                             "api_port": 65535, "max_station_id_length": 48}
    s = Settings(**given)
    assert s.log_level == "DEBUG"
    assert s.sim_start is not None and s.sim_start.isoformat() == "2026-07-01T08:00:00+00:00"
    assert Settings(mqtt_url="").mqtt_url is None and Settings(database_url="").database_url is None
    assert Settings(config="").config is None  # not the site file "."


@pytest.mark.parametrize(("given", "missing"), [
    ({"tls_cert": "/nonexistent.pem"}, "tls_key"),
    ({"tls_key": "/nonexistent.key"}, "tls_cert"),
    ({"tls_cert": "/nonexistent.pem", "tls_client_ca": "/nonexistent-ca.pem"}, "tls_key"),
    ({"tls_client_ca": "/nonexistent-ca.pem"}, "tls_cert"),
])
def test_half_a_tls_setup_is_refused(given: dict[str, Any], missing: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**given)
    message = str(info.value)
    assert f"GATEWAY_{missing.upper()}" in message and "--" + missing.replace("_", "-") in message


def test_the_tls_setup_never_quietly_serves_plain_ws(tmp_path: Path) -> None:
    # Settings built around the validation (model_copy does not validate) still get no plain ws.
    half = Settings().model_copy(update={"tls_cert": tmp_path / "server.pem"})
    with pytest.raises(ValueError, match="tls_key"):
        build_ssl_context(half)
    ca_only = Settings().model_copy(update={"tls_client_ca": tmp_path / "ca.pem"})
    with pytest.raises(ValueError, match="tls_cert"):
        build_ssl_context(ca_only)
    assert build_ssl_context(Settings()) is None


def test_one_setting_is_read_from_the_environment_in_any_case_as_settings_read_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`gateway sim --register` and `--api-url` take the database URL and the operator key
    from the environment without building every setting: in any case, as Settings does."""
    from gateway.config import env_setting

    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)  # the suite's own
    monkeypatch.setenv("gateway_database_url", "postgresql://u@h/db")
    assert env_setting("DATABASE_URL") == "postgresql://u@h/db" == Settings().database_url
    monkeypatch.delenv("gateway_database_url")
    assert env_setting("DATABASE_URL") is None


def test_a_reconnect_back_off_that_starts_above_its_most_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(mqtt_reconnect_min_s=20.0, mqtt_reconnect_max_s=10.0)
    assert "GATEWAY_MQTT_RECONNECT_MIN_S" in str(info.value)


@pytest.mark.parametrize("name", ["Europe", "localtime"])
def test_a_site_zone_that_is_no_iana_zone_is_one_clear_error(name: str) -> None:
    """"Europe" (a tzdata folder) escaped as IsADirectoryError, a traceback and exit 1."""
    from gateway.config import SiteConfig

    with pytest.raises(ValidationError) as info:
        SiteConfig(timezone=name)
    assert "unknown time zone" in str(info.value)


def test_a_login_in_the_mqtt_url_reaches_the_broker() -> None:
    """mqtt://user:password@host was accepted and the login dropped: a broker that requires one
    refused the bridge for ever."""
    from gateway.bus.mqtt import broker_login

    assert broker_login("mqtt://gw%40site:p%3Ass@broker:1883") == ("gw@site", "p:ss")
    assert broker_login("mqtt://broker") == (None, None)



@pytest.mark.parametrize("given", ["", "0", "none", "off", "None"])
def test_websocket_pings_are_turned_off_from_the_environment(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    # 0 used to reach the transport as a 0-s ping timeout, which closed every station at once.
    monkeypatch.setenv("GATEWAY_WS_PING_INTERVAL_S", given)
    assert Settings().ws_ping_interval_s is None
    monkeypatch.setenv("GATEWAY_WS_PING_INTERVAL_S", "30")
    assert Settings().ws_ping_interval_s == 30.0
