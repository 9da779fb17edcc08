"""Schema validation of 2.0.1 payloads and the violation -> CALLERROR code mapping."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ocpp.errors import OcppError
from gateway.ocpp.validation import V201, V201_STATION_ACTIONS

BOOT: dict[str, Any] = {"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "V"}}
METER: dict[str, Any] = {
    "evseId": 1,
    "meterValue": [{"timestamp": "2026-07-01T10:00:00Z", "sampledValue": [{"value": 1.5}]}],
}


def _code(action: str, payload: dict[str, Any], request: bool = True) -> str | None:
    try:
        if request:
            V201.check_station_call(action, payload)
        else:
            V201.check(action, payload, request=False)
    except OcppError as exc:
        return exc.code
    return None


def _with(base: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()
OCC, TYPE, PROP = "OccurrenceConstraintViolation", "TypeConstraintViolation", "PropertyConstraintViolation"


def test_valid_payloads_pass() -> None:
    assert _code("BootNotification", BOOT) is None
    assert _code("MeterValues", METER) is None
    assert _code("Heartbeat", {}) is None
    assert _code("Heartbeat", {"customData": {"vendorId": "x", "anything": [1, 2]}}) is None
    assert (
        _code(
            "BootNotification",
            {"currentTime": "2026-07-01T10:00:00Z", "interval": 300, "status": "Accepted"},
            request=False,
        )
        is None
    )


@pytest.mark.parametrize(
    ("action", "payload", "code"),
    [
        ("BootNotification", _with(BOOT, ["reason"], _DELETE), OCC),
        (
            "BootNotification",
            _with(BOOT, ["chargingStation", "model"], _DELETE),
            OCC,
        ),
        ("MeterValues", _with(METER, ["meterValue"], []), OCC),
        ("MeterValues", _with(METER, ["meterValue", 0, "sampledValue"], []), OCC),
        ("BootNotification", _with(BOOT, ["chargingStation", "model"], 12), TYPE),
        ("MeterValues", _with(METER, ["evseId"], "1"), TYPE),
        ("MeterValues", _with(METER, ["evseId"], 1.5), TYPE),
        ("BootNotification", _with(BOOT, ["chargingStation"], None), TYPE),
        ("BootNotification", _with(BOOT, ["reason"], "Bored"), PROP),
        (
            "BootNotification",
            _with(BOOT, ["chargingStation", "model"], "m" * 21),
            PROP,
        ),
        (
            "BootNotification",
            _with(BOOT, ["chargingStation", "model"], "m" * 60_000),
            PROP,
        ),
        (
            "MeterValues",
            _with(METER, ["meterValue", 0, "timestamp"], "yesterday"),
            PROP,
        ),
        ("BootNotification", _with(BOOT, ["surprise"], 1), "FormatViolation"),
        ("BootNotification", _with(BOOT, ["chargingStation", "colour"], "red"), "FormatViolation"),
    ],
)
def test_violation_maps_to_code(action: str, payload: dict[str, Any], code: str) -> None:
    assert _code(action, payload) == code


def test_unknown_and_csms_only_actions() -> None:
    assert _code("MakeCoffee", {}) == "NotImplemented"
    assert _code("SetChargingProfile", {}) == "NotSupported"  # CSMS -> station only
    assert "TransactionEvent" in V201_STATION_ACTIONS and all(V201.knows(a) for a in V201_STATION_ACTIONS)


def test_error_names_field_but_never_echoes_value() -> None:
    secret = "s3cr3t-value-" * 3
    with pytest.raises(OcppError) as info:
        V201.check_station_call("BootNotification", _with(BOOT, ["chargingStation", "model"], secret))
    assert "chargingStation.model" in info.value.description
    assert secret not in info.value.description and secret not in str(info.value.details)


def test_validators_are_compiled_once() -> None:
    assert V201.validator("Heartbeat", True) is V201.validator("Heartbeat", True)
    assert V201.validator("Heartbeat", True) is not V201.validator("Heartbeat", False)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    action=st.sampled_from(sorted(V201_STATION_ACTIONS)), payload=st.dictionaries(st.text(max_size=20), _json)
)
def test_arbitrary_payloads_only_raise_ocpp_errors(action: str, payload: dict[str, Any]) -> None:
    code = _code(action, payload)
    assert code is None or code != "InternalError"
