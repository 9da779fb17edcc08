"""Frames that are valid JSON but whose content cannot be used (OCPP-J Part 4 §4.2.3), and the
2.0.1 primitive-type rules the schemas do not express (Part 2: 32-bit integer, dateTime, text)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.clock import parse_rfc3339
from gateway.ocpp import protocol as p
from gateway.ocpp.errors import OcppError
from gateway.ocpp.validation import V201

TX: dict[str, Any] = {"eventType": "Started", "timestamp": "2026-07-01T08:00:00Z", "triggerReason": "Authorized",
                      "seqNo": 0, "transactionInfo": {"transactionId": "T1"}}
BIG = 1_735_725_600_000

def _nested(message_id: str, depth: int) -> str:
    """A DataTransfer CALL whose data is ``depth`` nested arrays around 1."""
    return '[2,"' + message_id + '","DataTransfer",{"vendorId":"v","data":' + "[" * depth + "1" + "]" * depth + "}]"



def _code(action: str, payload: dict[str, Any]) -> str | None:
    try:
        V201.check_station_call(action, payload)
    except OcppError as exc:
        return exc.code
    return None


@pytest.mark.parametrize(("frame", "expected"), [
    ('[2,"\\ud800","Heartbeat",{}]', p.FrameError("-1", "RpcFrameworkError", "")),
    ('[2,"m1","Heart\\udc00",{}]', p.FrameError("m1", "RpcFrameworkError", "")),
    ('[2,"m1","Heartbeat",{"k":"\\ud800"}]', p.FrameError("m1", "FormatViolation", "")),
    ('[2,"m1","Heartbeat",{"\\ud800":"k"}]', p.FrameError("m1", "FormatViolation", "")),
    ('[2,"m1","DataTransfer",{"vendorId":"v","data":1e400}]', p.FrameError("m1", "PropertyConstraintViolation", "")),
    (_nested("m1", 70),
     p.FrameError("m1", "FormatViolation", "")),
    ('[3,"m1",{"k":"\\udfff"}]', p.CallError("m1", "FormatViolation", "", {})),
    ('[3,"m1",{"k":-1e999}]', p.CallError("m1", "PropertyConstraintViolation", "", {})),
])
def test_unusable_content_is_refused_with_the_id(frame: str, expected: p.FrameError | p.CallError) -> None:
    got = p.parse_frame(frame)
    assert type(got) is type(expected)
    assert (got.message_id, got.code) == (expected.message_id, expected.code)  # type: ignore[union-attr]
    if isinstance(got, p.FrameError):
        got.reply().encode("utf-8")  # the answer is sendable


def test_pairs_and_escaped_backslashes_are_text() -> None:
    assert p.parse_frame('[2,"m1","Heartbeat",{"k":"\\ud83d\\ude00"}]') == p.Call("m1", "Heartbeat", {"k": "😀"})
    assert p.parse_frame('[2,"m1","Heartbeat",{"k":"\\\\ud800"}]') == p.Call("m1", "Heartbeat", {"k": "\\ud800"})
    deep = _nested("m1", 60)
    assert isinstance(p.parse_frame(deep), p.Call)


def test_builders_never_return_unsendable_text() -> None:
    with pytest.raises(ValueError):
        p.build_call_result("m1", {"k": "\ud800"})
    with pytest.raises(ValueError):
        p.build_call("m1", "DataTransfer", {"vendorId": "\udc00"})


def test_vendor_data_is_free_typed_fields_are_32_bit() -> None:
    assert _code("TransactionEvent", {**TX, "customData": {"vendorId": "x", "ms": BIG, "n": {"m": [BIG]}}}) is None
    assert _code("DataTransfer", {"vendorId": "v", "data": {"ts": BIG}}) is None
    assert _code("DataTransfer", {"vendorId": "v", "data": BIG}) is None
    assert _code("TransactionEvent", {**TX, "seqNo": 2**31}) == "PropertyConstraintViolation"
    assert _code("TransactionEvent", {**TX, "evse": {"id": 1, "connectorId": -(2**31) - 1}}) == \
        "PropertyConstraintViolation"
    # A decimal field may hold a large whole number.
    mv = {"evseId": 1, "meterValue": [{"timestamp": "2026-07-01T08:00:00Z", "sampledValue": [{"value": BIG}]}]}
    assert _code("MeterValues", mv) is None
    # Text rules hold everywhere, vendor data included (it is stored as jsonb).
    assert _code("DataTransfer", {"vendorId": "v", "data": {"a\x00": 1}}) == "PropertyConstraintViolation"
    assert _code("DataTransfer", {"vendorId": "v", "data": ["\ud800"]}) == "PropertyConstraintViolation"


@pytest.mark.parametrize("ts", ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_datetimes_no_instant_can_hold_are_property_violations(ts: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(ts)
    assert _code("TransactionEvent", {**TX, "timestamp": ts}) == "PropertyConstraintViolation"
    assert _code("StatusNotification", {"timestamp": ts, "connectorStatus": "Available", "evseId": 1,
                                        "connectorId": 1}) == "PropertyConstraintViolation"
    # In vendor data a string is only a string.
    assert _code("DataTransfer", {"vendorId": "v", "data": {"timestamp": ts}}) is None
