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
