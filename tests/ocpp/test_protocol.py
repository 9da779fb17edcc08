"""The pure OCPP-J layer: parsing, error decisions, frame building, the CALL slots."""

from __future__ import annotations

import json

import pytest

from gateway.ocpp import protocol as p

LONG_ID = "x" * 37


@pytest.mark.parametrize(
    ("frame", "code", "message_id"),
    [
        ("{not json", "RpcFrameworkError", "-1"),
        ("", "RpcFrameworkError", "-1"),
        ('[2, "a", "Heartbeat", {"x": NaN}]', "RpcFrameworkError", "-1"),
        ('{"a": 1}', "RpcFrameworkError", "-1"),
        ("[]", "RpcFrameworkError", "-1"),
        ('"just a string"', "RpcFrameworkError", "-1"),
        ("null", "RpcFrameworkError", "-1"),
        ("[" * 100_000 + "]" * 100_000, "RpcFrameworkError", "-1"),
        ('[7, "abc", "Heartbeat", {}]', "MessageTypeNotSupported", "abc"),
        ('["2", "abc", "Heartbeat", {}]', "MessageTypeNotSupported", "abc"),
        ('[true, "abc", "Heartbeat", {}]', "MessageTypeNotSupported", "abc"),
        ('[9, 17, "Heartbeat", {}]', "MessageTypeNotSupported", "-1"),
        ('[2, 17, "Heartbeat", {}]', "RpcFrameworkError", "-1"),
        ('[2, "", "Heartbeat", {}]', "RpcFrameworkError", "-1"),
        ('[2, null, "Heartbeat", {}]', "RpcFrameworkError", "-1"),
        ("[2]", "RpcFrameworkError", "-1"),
        (f'[2, "{LONG_ID}", "Heartbeat", {{}}]', "RpcFrameworkError", "-1"),
        ('[2, "abc", "Heartbeat"]', "RpcFrameworkError", "abc"),
        ('[2, "abc", "Heartbeat", {}, {}]', "RpcFrameworkError", "abc"),
        ('[2, "abc", 5, {}]', "RpcFrameworkError", "abc"),
        ('[2, "abc", "", {}]', "RpcFrameworkError", "abc"),
        ('[2, "abc", "Heartbeat", null]', "FormatViolation", "abc"),
        ('[2, "abc", "Heartbeat", []]', "FormatViolation", "abc"),
        ('[2, "abc", "Heartbeat", "{}"]', "FormatViolation", "abc"),
    ],
)
def test_malformed_call_maps_to_part4_code(frame: str, code: str, message_id: str) -> None:
    parsed = p.parse_frame(frame)
    assert isinstance(parsed, p.FrameError), parsed
    assert (parsed.code, parsed.message_id) == (code, message_id)
    reply = json.loads(parsed.reply())
    assert reply[:3] == [4, message_id, code]
    assert isinstance(reply[3], str) and reply[4] == {}


def test_non_utf8_bytes_and_binary_frames_are_rpc_errors() -> None:
    parsed = p.parse_frame(b"\xff\xfe[2]")
    assert isinstance(parsed, p.FrameError) and parsed.code == "RpcFrameworkError"
    binary = p.parse_binary()
    assert (binary.code, binary.message_id) == ("RpcFrameworkError", "-1")


def test_id_of_exactly_36_characters_is_accepted() -> None:
    parsed = p.parse_frame(json.dumps([2, "y" * 36, "Heartbeat", {}]))
    assert parsed == p.Call("y" * 36, "Heartbeat", {})


def test_well_formed_messages_parse() -> None:
    assert p.parse_frame('[2,"1","BootNotification",{"a":1}]') == p.Call("1", "BootNotification", {"a": 1})
    assert p.parse_frame('[3,"1",{"b":2}]') == p.CallResult("1", {"b": 2})
    assert p.parse_frame('[4,"1","NotSupported","no",{}]') == p.CallError("1", "NotSupported", "no", {})


@pytest.mark.parametrize(
    "frame",
    [
        '[3, "1"]',
        '[3, "1", null]',
        "[3, 5, {}]",
        '[4, "1", "X"]',
        '[4, "1", 3, "d", {}]',
        '[4, "1", "X", "d", []]',
    ],
)
def test_malformed_responses_are_ignored_never_answered(frame: str) -> None:
    assert isinstance(p.parse_frame(frame), p.Ignored)


def test_builders_round_trip_and_cap_description() -> None:
    call = p.build_call("9", "Reset", {"type": "Immediate"})
    assert p.parse_frame(call) == p.Call("9", "Reset", {"type": "Immediate"})
    assert p.parse_frame(p.build_call_result("9", {"status": "Accepted"})) == p.CallResult(
        "9", {"status": "Accepted"}
    )
    err = json.loads(p.build_call_error("9", "GenericError", "d" * 1000, {"k": 1}))
    assert err[0:3] == [4, "9", "GenericError"] and len(err[3]) == 255 and err[4] == {"k": 1}
    assert "ü" in p.build_call_result("1", {"n": "ü"})  # UTF-8 text frames, no \\u escapes


def test_message_ids_are_unique_and_short() -> None:
    ids = p.MessageIds()
    made = {ids.new() for _ in range(10_000)}
    assert len(made) == 10_000
    assert all(len(i) <= p.MAX_MESSAGE_ID_LENGTH for i in made)
    assert p.MessageIds().new() != p.MessageIds().new()


def test_outgoing_one_in_flight_rest_in_order() -> None:
    out = p.OutgoingCalls()
    a, b, c = (out.submit(name, {}) for name in ("A", "B", "C"))
    assert out.next_to_send() is a
    assert out.next_to_send() is None  # slot busy
    assert out.reply_for(b.message_id) is None  # not in flight: stray
    assert out.reply_for(a.message_id) is a
    assert out.reply_for(a.message_id) is None  # answered twice: second is stray
    assert out.next_to_send() is b
    assert out.reply_for(b.message_id) is b
    assert out.next_to_send() is c
    assert out.next_to_send() is None


def test_outgoing_abandon_frees_slot_or_removes_from_queue() -> None:
    out = p.OutgoingCalls()
    a, b, c = (out.submit(name, {}) for name in ("A", "B", "C"))
    assert out.next_to_send() is a
    out.abandon(b)  # queued: removed, never sent
    out.abandon(a)  # in flight (timed out): slot freed, late reply is stray
    assert out.reply_for(a.message_id) is None
    assert out.next_to_send() is c
    out.abandon(c)
    out.abandon(c)  # idempotent
    assert out.next_to_send() is None


def test_outgoing_close_returns_every_pending_call_in_order() -> None:
    out = p.OutgoingCalls()
    a, b, c = (out.submit(name, {}) for name in ("A", "B", "C"))
    out.next_to_send()
    assert out.close() == [a, b, c]
    assert out.close() == [] and out.next_to_send() is None


def test_incoming_duplicate_id_in_progress_is_dropped_then_allowed_again() -> None:
    inc = p.IncomingCalls()
    first = p.Call("1", "Heartbeat", {})
    assert inc.receive(first)
    assert not inc.receive(p.Call("1", "Heartbeat", {}))  # retransmission while queued
    assert inc.receive(p.Call("2", "Heartbeat", {}))
    got = inc.next()
    assert got is first
    assert not inc.receive(p.Call("1", "Heartbeat", {}))  # still being handled
    inc.done(first)
    assert inc.receive(p.Call("1", "Heartbeat", {}))  # a new message may reuse it later
    assert [c.message_id for c in (inc.next(), inc.next()) if c] == ["2", "1"]
    assert inc.next() is None
