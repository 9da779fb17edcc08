"""The OCPP transport over real WebSockets on port 0 (docs/reliability.md S1, S2, S4, S5, S6, R1)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.clock import ManualClock
from gateway.ocpp.commands import StationCommands
from gateway.ocpp.errors import (
    CallErrorReceived,
    CallTimeout,
    ConnectionReplaced,
    GenericError,
    StationOffline,
)
from tests.ocpp.conftest import PASSWORD, PASSWORD_HASH, Gateway, StartGateway
from tests.ocpp.peers import (
    WAIT_S,
    MemoryDirectory,
    Station,
    boot_payload,
    open_station,
    raise_ocpp,
)


async def _refused(gw: Gateway, station_id: str, password: str | None, **kw: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        await open_station(gw.url, station_id, password, **kw)
    return info.value.response.status_code


async def _station(gw: Gateway, station_id: str = "CS1", password: str = PASSWORD, **kw: Any) -> Station:
    return Station(await open_station(gw.url, station_id, password, **kw))


async def _close_code(ws: Any) -> int | None:
    async with asyncio.timeout(WAIT_S):
        await ws.wait_closed()
    return ws.close_code  # type: ignore[no-any-return]


# --- the happy path --------------------------------------------------------------------------


async def test_boot_and_heartbeat_are_answered_and_observed(gw: Gateway) -> None:
    st = await _station(gw)
    boot = await st.call("BootNotification", boot_payload())
    assert boot[0] == 3 and boot[2]["status"] == "Accepted"
    beat = await st.call("Heartbeat", {})
    assert beat[0] == 3 and beat[2]["currentTime"].endswith("Z")
    assert gw.server.registry.connected_ids() == ["CS1"] and gw.server.registry.count() == 1
    ctx = gw.observer.connected[0]
    assert (ctx.station_id, ctx.remote_address, ctx.ocpp_version) == ("CS1", "127.0.0.1", "2.0.1")
    await st.close()
    await gw.observer.wait(lambda: len(gw.observer.disconnected) == 1)
    assert gw.observer.disconnected[0][1] == 1000 and gw.server.registry.count() == 0


# --- S1: the handshake -----------------------------------------------------------------------


async def test_s1_unknown_id_is_404_and_reaches_nothing(gw: Gateway) -> None:
    assert await _refused(gw, "NOPE", PASSWORD) == 404
    assert await _refused(gw, "CS1/extra", PASSWORD) == 404
    assert gw.handler.calls == [] and gw.observer.connected == []
    await gw.security.wait_for("unknown_station")


async def test_s1_invalid_ids_are_400(start_gateway: StartGateway) -> None:
    directory = MemoryDirectory()
    directory.add("L" * 48, PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory)
    assert await _refused(gw, "L" * 49, PASSWORD) == 400
    assert await _refused(gw, "a:b", PASSWORD) == 400
    assert await _refused(gw, "x", PASSWORD, path_id="a%3Ab") == 400
    assert await _refused(gw, "x", PASSWORD, path_id="a%2Fb") == 400
    assert await _refused(gw, "x", PASSWORD, path_id="a%00b") == 400
    assert await _refused(gw, "x", PASSWORD, path_id="%FF") == 400
    assert directory.lookups == 0  # refused before any lookup
    st = await _station(gw, "L" * 48)
    assert (await st.call("Heartbeat", {}))[0] == 3


async def test_s1_percent_encoded_id_is_decoded_and_accepted(start_gateway: StartGateway) -> None:
    directory = MemoryDirectory()
    directory.add("CS 01-\u00e4", PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory)
    st = await _station(gw, "CS 01-\u00e4", path_id="CS%2001-%C3%A4")
    assert (await st.call("Heartbeat", {}))[0] == 3
    assert gw.handler.calls[0][0] == "CS 01-\u00e4"
    assert gw.server.registry.get("CS 01-\u00e4") is not None


@pytest.mark.parametrize("subprotocols", [[], ["ocpp1.6"]])
async def test_s1_no_acceptable_subprotocol_is_closed_1002_after_handshake(
    gw: Gateway, subprotocols: list[str]
) -> None:
    ws = await open_station(gw.url, "CS1", PASSWORD, subprotocols=subprotocols)
    assert await _close_code(ws) == 1002
    assert "ocpp2.0.1" in (ws.close_reason or "")
    assert gw.handler.calls == [] and gw.observer.connected == []


# --- S2: Basic auth --------------------------------------------------------------------------


async def test_s2_missing_wrong_or_mismatched_credentials_are_401(start_gateway: StartGateway) -> None:
    directory = MemoryDirectory()
    for sid, profile, enabled in (("CS1", 1, True), ("CS2", 1, True), ("P2", 2, True), ("OFF", 1, False)):
        directory.add(sid, PASSWORD, password_hash=PASSWORD_HASH, profile=profile, enabled=enabled)
    directory.add("NOPW", None)
    gw = await start_gateway(directory)
    with pytest.raises(InvalidStatus) as info:
        await open_station(gw.url, "CS1", None)
    assert info.value.response.status_code == 401
    assert info.value.response.headers["WWW-Authenticate"].startswith("Basic")
    assert await _refused(gw, "CS1", "wrong-password-123456") == 401
    assert await _refused(gw, "CS1", PASSWORD, username="CS2") == 401  # valid pair, wrong station
    assert await _refused(gw, "P2", PASSWORD) == 401  # profile 2 over plain ws
    assert await _refused(gw, "OFF", PASSWORD) == 401
    assert await _refused(gw, "NOPW", "") == 401
    await gw.security.wait_for("station_disabled", count=2)
    assert {"auth_missing", "auth_failed", "auth_username_mismatch", "insecure_transport"} <= set(
        gw.security.kinds()
    )
    assert gw.handler.calls == [] and gw.observer.connected == []


async def test_s2_authorization_header_and_password_are_never_logged(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    st = await _station(gw)
    await st.call("Heartbeat", {})
    await _refused(gw, "CS1", "wrong-password-123456")
    from tests.ocpp.peers import basic

    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))
    assert "< Authorization: [redacted]" in ours  # the handshake really was logged at DEBUG
    for secret in (
        PASSWORD,
        "wrong-password-123456",
        basic("CS1", PASSWORD).split()[1],
        basic("CS1", "wrong-password-123456").split()[1],
    ):
        assert secret not in ours


# --- S4: lock-out ----------------------------------------------------------------------------


async def test_s4_lockout_per_station_id_and_address(start_gateway: StartGateway) -> None:
    clock = ManualClock(datetime(2026, 7, 1, 8, 0, tzinfo=UTC))
    directory = MemoryDirectory()
    directory.add("CS1", PASSWORD, password_hash=PASSWORD_HASH)
    directory.add("CS2", PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory, clock=clock, auth_failures_per_minute_max=10, auth_lockout_s=60)
    for _ in range(10):
        assert await _refused(gw, "CS1", "wrong-password-123456") == 401
    await gw.security.wait_for("auth_lockout", count=2)  # the id and the address
    lookups = directory.lookups
    assert await _refused(gw, "CS1", PASSWORD) == 429  # even the right password: locked
    assert await _refused(gw, "CS2", PASSWORD) == 429  # same address: locked too
    assert directory.lookups == lookups  # refused before lookup or hashing
    failures = gw.security.kinds().count("auth_failed")
    assert failures == 10  # lock-out refusals are not each recorded
    clock.advance(61)
    st = await _station(gw, "CS1")
    assert (await st.call("Heartbeat", {}))[0] == 3


async def test_s4_unknown_ids_from_one_address_lock_the_address(start_gateway: StartGateway) -> None:
    clock = ManualClock(datetime(2026, 7, 1, 8, 0, tzinfo=UTC))
    directory = MemoryDirectory()
    directory.add("CS1", PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory, clock=clock, auth_failures_per_minute_max=3, auth_lockout_s=30)
    for i in range(3):
        assert await _refused(gw, f"GUESS{i}", PASSWORD) == 404
    with pytest.raises(InvalidStatus) as info:
        await open_station(gw.url, "CS1", PASSWORD)
    assert info.value.response.status_code == 429
    assert int(info.value.response.headers["Retry-After"]) >= 1


# --- S5 / S6: a second connection for the same id --------------------------------------------


async def test_s5_unauthenticated_second_connection_leaves_live_one_untouched(gw: Gateway) -> None:
    st = await _station(gw)
    live = gw.server.registry.get("CS1")
    assert await _refused(gw, "CS1", "wrong-password-123456") == 401
    assert await _refused(gw, "CS1", None) == 401
    assert gw.server.registry.get("CS1") is live
    assert (await st.call("Heartbeat", {}))[0] == 3
    assert gw.observer.disconnected == []


async def test_s6_newest_authenticated_wins_old_closed_fast_pending_calls_fail(gw: Gateway) -> None:
    old = await _station(gw)
    old_conn = gw.server.registry.get("CS1")
    assert old_conn is not None
    pending = asyncio.ensure_future(old_conn.call("Reset", {"type": "Immediate"}))
    queued = asyncio.ensure_future(old_conn.call("Reset", {"type": "OnIdle"}))
    assert (await old.next_incoming())[2] == "Reset"  # in flight, never answered
    t0 = time.monotonic()
    new = await _station(gw)
    with pytest.raises(ConnectionReplaced):
        await asyncio.wait_for(pending, WAIT_S)
    with pytest.raises(ConnectionReplaced):
        await asyncio.wait_for(queued, WAIT_S)
    await _close_code(old.ws)
    assert time.monotonic() - t0 < 1.0
    assert gw.server.registry.get("CS1") is not old_conn
    assert (await new.call("Heartbeat", {}))[0] == 3
    with pytest.raises(ConnectionReplaced):
        await old_conn.call("Reset", {"type": "Immediate"})  # fails fast, nothing queued


async def test_s6_repeated_takeovers_raise_a_security_event(gw: Gateway) -> None:
    stations = [await _station(gw) for _ in range(4)]
    await gw.security.wait_for("repeated_takeover")
    assert (await stations[-1].call("Heartbeat", {}))[0] == 3
    await gw.observer.wait(lambda: len(gw.observer.disconnected) == 3)
    assert gw.server.registry.get("CS1") is not None  # an old socket closing never unregisters the new


# --- R1: malformed frames --------------------------------------------------------------------

BOOT = boot_payload()
MALFORMED: list[tuple[str | bytes, str, str]] = [
    ("{bad json", "RpcFrameworkError", "-1"),
    ('{"not": "an array"}', "RpcFrameworkError", "-1"),
    ('[2, "r1", "Heartbeat"]', "RpcFrameworkError", "r1"),
    ('[8, "r2", "Heartbeat", {}]', "MessageTypeNotSupported", "r2"),
    (json.dumps([2, "i" * 37, "Heartbeat", {}]), "RpcFrameworkError", "-1"),
    ('[2, "r3", "MakeCoffee", {}]', "NotImplemented", "r3"),
    ('[2, "r4", "SetChargingProfile", {}]', "NotSupported", "r4"),
    (json.dumps([2, "r5", "BootNotification", {"reason": "PowerUp"}]), "OccurrenceConstraintViolation", "r5"),
    (json.dumps([2, "r6", "BootNotification", {**BOOT, "extra": 1}]), "FormatViolation", "r6"),
    (json.dumps([2, "r7", "BootNotification", {**BOOT, "reason": 5}]), "TypeConstraintViolation", "r7"),
    (
        json.dumps([2, "r8", "BootNotification", {**BOOT, "reason": "Bored"}]),
        "PropertyConstraintViolation",
        "r8",
    ),
    (
        json.dumps(
            [
                2,
                "r9",
                "BootNotification",
                {**BOOT, "chargingStation": {"model": "m" * 30000, "vendorName": "V"}},
            ]
        ),
        "PropertyConstraintViolation",
        "r9",
    ),
    (b"\x00\x01binary", "RpcFrameworkError", "-1"),
    ("[" * 20000 + "]" * 20000, "RpcFrameworkError", "-1"),
    ('[2, "r10", "Heartbeat", null]', "FormatViolation", "r10"),
    ('[2, 42, "Heartbeat", {}]', "RpcFrameworkError", "-1"),
    ('[2, "r11", null, {}]', "RpcFrameworkError", "r11"),
    (
        json.dumps([2, "r12", "MeterValues", {"evseId": 1, "meterValue": []}]),
        "OccurrenceConstraintViolation",
        "r12",
    ),
]


async def test_r1_malformed_frames_get_part4_callerror_and_socket_lives(gw: Gateway) -> None:
    st = await _station(gw)
    for frame, code, message_id in MALFORMED:
        await st.ws.send(frame)
        reply = await st.next_incoming()
        assert reply[:3] == [4, message_id, code], (frame[:60], reply)
        assert reply[2] != "InternalError"
        ok = await st.call("Heartbeat", {})  # the socket stays open and the next CALL is answered
        assert ok[0] == 3
    assert [c[1] for c in gw.handler.calls] == ["Heartbeat"] * len(MALFORMED)


async def test_r1_frame_over_the_size_limit_closes_1009(start_gateway: StartGateway) -> None:
    directory = MemoryDirectory()
    directory.add("CS1", PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory, max_frame_bytes=4096)
    st = await _station(gw)
    await st.ws.send(json.dumps([2, "big", "DataTransfer", {"vendorId": "v", "data": "x" * 5000}]))
    assert await _close_code(st.ws) == 1009


async def test_our_handler_bugs_and_errors_become_callerrors(gw: Gateway) -> None:
    st = await _station(gw)
    gw.handler.replies["Heartbeat"] = lambda _: {"currentTime": "not a time"}
    assert (await st.call("Heartbeat", {}))[2] == "InternalError"  # invalid reply from our side
    gw.handler.replies["Heartbeat"] = lambda _: {"currentTime": float("nan")}
    assert (await st.call("Heartbeat", {}))[2] == "InternalError"

    def crash(_: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    gw.handler.replies["Heartbeat"] = crash
    assert (await st.call("Heartbeat", {}))[2:4] == ["InternalError", "the CSMS could not process it"]
    gw.handler.replies["Heartbeat"] = raise_ocpp(GenericError("busy"))
    assert (await st.call("Heartbeat", {}))[2:4] == ["GenericError", "busy"]


async def test_duplicate_message_id_in_progress_is_handled_once(gw: Gateway) -> None:
    st = await _station(gw)
    conn = gw.server.registry.get("CS1")
    assert conn is not None
    gate = gw.handler.stall["BootNotification"] = asyncio.Event()
    frame = json.dumps([2, "dup", "BootNotification", BOOT])
    await st.ws.send(frame)
    await asyncio.wait_for(gw.handler.started.wait(), WAIT_S)
    # Our CALL's reply travels behind the duplicate: once it is in, the duplicate was read.
    reset = asyncio.ensure_future(conn.call("Reset", {"type": "OnIdle"}))
    msg = await st.next_incoming()
    await st.ws.send(frame)
    await st.ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
    await asyncio.wait_for(reset, WAIT_S)
    gate.set()
    reply = await st.next_incoming()
    assert reply[:2] == [3, "dup"]
    assert (await st.call("Heartbeat", {}))[0] == 3  # processed after: the dup produced nothing
    assert st.incoming.empty()
    assert [c[1] for c in gw.handler.calls] == ["BootNotification", "Heartbeat"]


async def test_slow_handler_blocks_neither_other_stations_nor_our_call_replies(
    start_gateway: StartGateway,
) -> None:
    directory = MemoryDirectory()
    for sid in ("CS1", "CS2"):
        directory.add(sid, PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory)
    slow, fast = await _station(gw, "CS1"), await _station(gw, "CS2")
    gate = gw.handler.stall["MeterValues"] = asyncio.Event()
    await slow.ws.send(
        json.dumps(
            [
                2,
                "mv",
                "MeterValues",
                {
                    "evseId": 1,
                    "meterValue": [{"timestamp": "2026-07-01T10:00:00Z", "sampledValue": [{"value": 1}]}],
                },
            ]
        )
    )
    await asyncio.wait_for(gw.handler.started.wait(), WAIT_S)
    assert (await fast.call("Heartbeat", {}))[0] == 3
    slow.answer = lambda action, payload: {"status": "Accepted"}
    conn = gw.server.registry.get("CS1")
    assert conn is not None
    assert await conn.call("Reset", {"type": "OnIdle"}, timeout_s=WAIT_S) == {"status": "Accepted"}
    gate.set()
    assert (await slow.next_incoming())[:2] == [3, "mv"]


# --- our CALLs to the station ----------------------------------------------------------------


async def test_outgoing_calls_one_in_flight_queued_in_order(gw: Gateway) -> None:
    st = await _station(gw)
    conn = gw.server.registry.get("CS1")
    assert conn is not None
    kinds = ["Immediate", "OnIdle", "Immediate"]
    tasks = [asyncio.ensure_future(conn.call("Reset", {"type": k, "evseId": i})) for i, k in enumerate(kinds)]
    seen = []
    for i in range(3):
        msg = await st.next_incoming()
        seen.append(msg[3]["evseId"])
        assert (await st.call("Heartbeat", {}))[0] == 3  # round trip: the server had time to misbehave
        assert st.incoming.empty(), "a second CALL was sent while one was outstanding"
        await st.ws.send(json.dumps([3, msg[1], {"status": "Accepted" if i != 1 else "Scheduled"}]))
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert seen == [0, 1, 2]
    assert [r["status"] for r in results] == ["Accepted", "Scheduled", "Accepted"]


async def test_outgoing_timeout_frees_the_slot_and_late_reply_is_ignored(gw: Gateway) -> None:
    st = await _station(gw)
    conn = gw.server.registry.get("CS1")
    assert conn is not None
    first = asyncio.ensure_future(conn.call("Reset", {"type": "Immediate"}, timeout_s=0.3))
    second = asyncio.ensure_future(conn.call("Reset", {"type": "OnIdle"}, timeout_s=WAIT_S))
    msg1 = await st.next_incoming()
    with pytest.raises(CallTimeout) as info:
        await first
    assert info.value.timeout_s == 0.3
    msg2 = await st.next_incoming()
    assert msg2[3] == {"type": "OnIdle"}
    await st.ws.send(json.dumps([3, msg1[1], {"status": "Rejected"}]))  # late: ignored
    await st.ws.send(json.dumps([3, msg2[1], {"status": "Accepted"}]))
    assert await asyncio.wait_for(second, WAIT_S) == {"status": "Accepted"}


async def test_a_call_queued_behind_others_has_its_whole_timeout_from_when_it_goes_out(gw: Gateway) -> None:
    """One CALL in flight at a time: a call that waited its turn for most of its timeout was
    taken for one the station left unanswered (CallTimeout), and the scheduler took a station
    that answered every call it got for a hung one. Its timeout now counts from its send; one
    that never went out says so (CallNotSent)."""
    from gateway.ocpp.errors import CallNotSent

    st = await _station(gw)
    conn = gw.server.registry.get("CS1")
    assert conn is not None
    loop = asyncio.get_running_loop()
    first = asyncio.ensure_future(conn.call("Reset", {"type": "Immediate"}, timeout_s=0.5))
    msg1 = await st.next_incoming()  # never answered
    queued_at = loop.time()
    second = asyncio.ensure_future(conn.call("Reset", {"type": "OnIdle"}, timeout_s=0.6))
    with pytest.raises(CallTimeout) as info:
        await first
    assert not isinstance(info.value, CallNotSent)
    msg2 = await st.next_incoming()  # sent with 0.1-0.6 s of its budget left
    assert msg2[3] == {"type": "OnIdle"}
    while loop.time() < queued_at + 0.7:  # past its first deadline, within the one from its send
        await asyncio.sleep(0.05)
    await st.ws.send(json.dumps([3, msg2[1], {"status": "Accepted"}]))
    assert await asyncio.wait_for(second, WAIT_S) == {"status": "Accepted"}
    # A call whose turn never comes within its timeout was never sent.
    blocking = asyncio.ensure_future(conn.call("Reset", {"type": "Immediate"}, timeout_s=WAIT_S))
    await st.next_incoming()
    with pytest.raises(CallNotSent):
        await conn.call("Reset", {"type": "OnIdle"}, timeout_s=0.2)
    blocking.cancel()
    assert msg1[1] != msg2[1]


async def test_a_call_cancelled_before_it_went_out_is_never_sent(gw: Gateway) -> None:
    """Its caller gave up (cancelled) between taking the slot and the send: sending it anyway would
    put two CALLs in flight (the next one right behind), the first acted on by nobody's wish."""
    st = await _station(gw)
    conn = gw.server.registry.get("CS1")
    assert conn is not None
    # What Connection.call does, with its caller giving up within the same tick: the call takes
    # the free slot (its send is a task not yet run), then is abandoned and the slot freed.
    first = conn._outgoing.submit("Reset", {"type": "Immediate"})
    conn._pump()
    conn._outgoing.abandon(first)
    second = asyncio.ensure_future(conn.call("Reset", {"type": "OnIdle"}))
    msg = await st.next_incoming()
    assert msg[3] == {"type": "OnIdle"}
    assert (await st.call("Heartbeat", {}))[0] == 3  # round trip: a stray first CALL would be here by now
    assert st.incoming.empty(), "the cancelled CALL was sent"
    await st.ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
    assert await asyncio.wait_for(second, WAIT_S) == {"status": "Accepted"}


async def test_outgoing_callerror_and_invalid_result_are_raised(gw: Gateway) -> None:
    st = await _station(gw)
    conn = gw.server.registry.get("CS1")
    assert conn is not None
    call = asyncio.ensure_future(conn.call("Reset", {"type": "Immediate"}))
    msg = await st.next_incoming()
    await st.ws.send(json.dumps([4, msg[1], "NotSupported", "no reset here", {"x": 1}]))
    with pytest.raises(CallErrorReceived) as info:
        await asyncio.wait_for(call, WAIT_S)
    assert (info.value.code, info.value.description, info.value.details) == (
        "NotSupported",
        "no reset here",
        {"x": 1},
    )
    call = asyncio.ensure_future(conn.call("Reset", {"type": "Immediate"}))
    msg = await st.next_incoming()
    await st.ws.send(json.dumps([3, msg[1], {"status": "Maybe"}]))
    with pytest.raises(CallErrorReceived) as info:
        await asyncio.wait_for(call, WAIT_S)
    assert info.value.code == "PropertyConstraintViolation"
    assert info.value.description.startswith("invalid CALLRESULT")


async def test_a_reply_in_the_wrong_shape_fails_the_call_at_once(gw: Gateway) -> None:
    """[3, id, null] answers the call all the same: it was dropped, and the caller sat out its
    timeout (and the scheduler took the station for a hung one)."""
    st = await _station(gw)
    conn = gw.server.registry.get("CS1")
    assert conn is not None
    call = asyncio.ensure_future(conn.call("Reset", {"type": "Immediate"}, timeout_s=60.0))
    msg = await st.next_incoming()
    await st.ws.send(json.dumps([3, msg[1], None]))
    with pytest.raises(CallErrorReceived) as info:
        await asyncio.wait_for(call, WAIT_S)
    assert info.value.code == "FormatViolation"
    assert (await st.call("Heartbeat", {}))[0] == 3
    assert st.incoming.empty()  # a response gets no response


async def test_commands_build_wire_payloads_and_fail_fast_offline(gw: Gateway) -> None:
    commands = StationCommands(gw.server.registry, gw.server.settings)
    with pytest.raises(StationOffline):
        await commands.reset("CS1")
    st = await _station(gw)
    received: list[tuple[str, dict[str, Any]]] = []

    def answer(action: str, payload: dict[str, Any]) -> dict[str, Any]:
        received.append((action, payload))
        return {"status": "Accepted"}

    st.answer = answer
    profile = {
        "id": 7,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "transactionId": "T1",
        "chargingSchedule": [
            {
                "id": 1,
                "chargingRateUnit": "W",
                "startSchedule": "2026-07-01T10:00:00Z",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": -3700.0}],
            }
        ],
    }
    assert await commands.set_charging_profile("CS1", 1, profile) == {"status": "Accepted"}
    await commands.trigger_message("CS1", "StatusNotification", evse_id=1, connector_id=1)
    await commands.change_availability("CS1", "Inoperative", evse_id=2)
    await commands.reset("CS1", "OnIdle")
    assert received[0] == ("SetChargingProfile", {"evseId": 1, "chargingProfile": profile})
    assert received[1] == (
        "TriggerMessage",
        {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}},
    )
    assert received[2] == ("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 2}})
    assert received[3] == ("Reset", {"type": "OnIdle"})


# --- shutdown --------------------------------------------------------------------------------


async def test_stop_closes_every_station_with_1001_and_fails_pending_calls(
    start_gateway: StartGateway,
) -> None:
    directory = MemoryDirectory()
    for i in range(5):
        directory.add(f"CS{i}", PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory, shutdown_drain_s=2.0)
    stations = [await _station(gw, f"CS{i}") for i in range(5)]
    conn = gw.server.registry.get("CS0")
    assert conn is not None
    pending = asyncio.ensure_future(conn.call("Reset", {"type": "Immediate"}))
    await stations[0].next_incoming()
    t0 = time.monotonic()
    await gw.server.stop()
    assert time.monotonic() - t0 < 2.5
    for st in stations:
        assert await _close_code(st.ws) == 1001
    with pytest.raises(ConnectionReplaced):
        await asyncio.wait_for(pending, WAIT_S)
    with pytest.raises((ConnectionClosed, OSError)):
        await open_station(gw.url, "CS1", PASSWORD)


async def test_directory_outage_is_503_not_a_credential_failure(start_gateway: StartGateway) -> None:
    class DownDirectory(MemoryDirectory):
        async def credentials(self, station_id: str) -> Any:
            raise ConnectionRefusedError("database down")

    gw = await start_gateway(DownDirectory())
    with pytest.raises(InvalidStatus) as info:
        await open_station(gw.url, "CS1", PASSWORD)
    assert info.value.response.status_code == 503
    assert "Retry-After" in info.value.response.headers
    assert gw.server.lockout.failures(("id", "CS1")) == 0


async def test_during_an_outage_a_station_read_before_logs_in_against_that_registration(
        start_gateway: StartGateway) -> None:
    """A link that drops while the database is away comes back: the station's registration as read
    last stands in (its password still checked); one never read, or disabled since, waits for the
    database (503)."""

    class FlakyDirectory(MemoryDirectory):
        down = False

        async def credentials(self, station_id: str) -> Any:
            if self.down:
                raise ConnectionRefusedError("database down")
            return await super().credentials(station_id)

    directory = FlakyDirectory()
    directory.add("CS1", PASSWORD, password_hash=PASSWORD_HASH)
    directory.add("CS2", PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory)
    first = await _station(gw)
    await first.ws.close()
    directory.down = True
    again = await _station(gw)  # read before the outage
    assert (await again.call("Heartbeat", {}))[0] == 3
    await again.ws.close()
    assert await _refused(gw, "CS1", "wrong-password-123456") == 401
    assert await _refused(gw, "CS2", PASSWORD) == 503  # never read: nothing to stand in
    await gw.server.shut_out("CS1")
    assert await _refused(gw, "CS1", PASSWORD) == 503  # disabled since: not on the old read


async def test_allow_unknown_stations_admits_unknown_and_passwordless_only(start_gateway: StartGateway) -> None:
    directory = MemoryDirectory()
    directory.add("NOPW", None)
    directory.add("CS1", PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory, allow_unknown_stations=True)
    for sid in ("NEW1", "NOPW"):
        st = Station(await open_station(gw.url, sid, None))
        assert (await st.call("Heartbeat", {}))[0] == 3
    assert await _refused(gw, "CS1", "wrong-password-123456") == 401  # a password still counts
