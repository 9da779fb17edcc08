"""Station input that is schema-valid (or valid JSON) but used to be lost or crash a handler, over
a real WebSocket against a real gateway and Postgres (docs/reliability.md R1, R2, D1, D4, D5)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway import events as ev
from gateway import metrics
from gateway.clock import parse_rfc3339
from gateway.db.transactions import Recorded
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.gateway.test_handlers import PASSWORD, energy, fetch, tx_event, wait_for
from tests.ocpp_client import RawStation

EPOCH_MS = 1_735_725_600_000  # a vendor's epoch-milliseconds: past 32 bits

def _nested(message_id: str, depth: int) -> str:
    """A DataTransfer CALL whose data is ``depth`` nested arrays around 1."""
    return '[2,"' + message_id + '","DataTransfer",{"vendorId":"v","data":' + "[" * depth + "1" + "]" * depth + "}]"



async def _reply_by_id_or_unreadable(st: RawStation, frame: str, mid: str) -> list[Any]:
    loop = asyncio.get_running_loop()
    futures = {key: loop.create_future() for key in (mid, "-1")}
    st._replies.update(futures)
    await st.ws.send(frame)
    done, _ = await asyncio.wait(futures.values(), timeout=EVENT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    for key in futures:
        st._replies.pop(key, None)
    assert done, "no reply"
    result: list[Any] = done.pop().result()
    return result


async def _alive(st: RawStation) -> None:
    assert "currentTime" in await st.ok("Heartbeat", {})  # the same socket still answers


# --- 1: the 32-bit rule applies where the schema types an integer, never inside vendor data ---


async def test_vendor_data_may_hold_numbers_past_32_bits(gateway_server: GatewayHarness, station: RawStation) -> None:
    p = tx_event("Started", 0, tid="TX-CUST", customData={"vendorId": "com.example", "eventTimeMs": EPOCH_MS})
    assert (await station.call("TransactionEvent", p))[0] == 3
    rows = await fetch(gateway_server.database_url,
                       "SELECT payload FROM transaction_events WHERE transaction_id='TX-CUST'")
    assert json.loads(rows[0]["payload"])["customData"]["eventTimeMs"] == EPOCH_MS
    reply = await station.call("DataTransfer", {"vendorId": "com.example", "data": {"ts": EPOCH_MS, "l": [EPOCH_MS]}})
    assert reply[0] == 3 and reply[2] == {"status": "UnknownVendorId"}
    # A field the schema types as integer still holds 32 bits (Part 2, primitive datatypes).
    too_big = tx_event("Updated", 2**31, tid="TX-CUST", timestamp="2026-07-01T08:01:00Z")
    reply = await station.call("TransactionEvent", too_big)
    assert reply[2:4] == ["PropertyConstraintViolation", "seqNo: 32-bit integer violated"]


async def test_a_whole_number_written_as_a_float_is_an_integer_with_its_32_bits(
        gateway_server: GatewayHarness, station: RawStation) -> None:
    reply = await station.call("TransactionEvent", {**tx_event("Started", 0, tid="TX-FLOAT"), "seqNo": 1e10})
    assert reply[2:4] == ["PropertyConstraintViolation", "seqNo: 32-bit integer violated"]
    assert (await station.call("TransactionEvent", tx_event("Started", 0, tid="TX-FLOAT")))[0] == 3
    assert (await station.call("TransactionEvent", {**tx_event("Updated", 3, tid="TX-FLOAT"), "seqNo": 3.0}))[0] == 3
    rows = await fetch(gateway_server.database_url,
                       "SELECT seq_no FROM transaction_events WHERE transaction_id='TX-FLOAT' ORDER BY seq_no")
    assert [r["seq_no"] for r in rows] == [0, 3]
    await _alive(station)


# --- 2: the idToken lookup is part of what is withheld during an outage (D5) ---


async def _known_tokens_behind_proxy(gateway_factory: Any, url: str, station_id: str,
                                     **settings: Any) -> tuple[Any, RawStation]:
    """A gateway that accepts known idTokens only (and ``settings``), its database behind the
    cuttable proxy at ``url``, and a station connected to it."""
    h = await gateway_factory(database_url=url, db_retry_interval_s=0.1, known_tokens_only=True, **settings)
    await h.add_station(station_id, PASSWORD)
    return h, await RawStation.connect(h.ocpp_url, station_id, PASSWORD)


async def test_token_lookup_during_an_outage_withholds_the_reply(
    gateway_factory: Any, proxy_and_url: tuple[Any, str], clean_db: str
) -> None:
    proxy, url = proxy_and_url
    _, st = await _known_tokens_behind_proxy(gateway_factory, url, "CS-T")
    retries = metrics.DB_RETRIES.labels("transaction_event")
    before = retries._value.get()  # type: ignore[attr-defined]
    await proxy.cut()
    p = tx_event("Started", 0, tid="TX-OUT", idToken={"idToken": "RFID-NEVER-SEEN", "type": "ISO14443"})
    pending = asyncio.create_task(st.call("TransactionEvent", p))

    async def retried_or_answered() -> bool:
        return pending.done() or retries._value.get() > before  # type: ignore[attr-defined]

    await wait_for(retried_or_answered)
    assert not pending.done(), f"answered during the outage: {pending.result()}"
    await proxy.restore()
    reply = await asyncio.wait_for(pending, EVENT_TIMEOUT_S)
    # The spec's answer: the token is unknown (known_tokens_only), and the event is stored.
    assert reply[0] == 3 and reply[2] == {"idTokenInfo": {"status": "Unknown"}}
    rows = await fetch(clean_db, "SELECT seq_no FROM transaction_events WHERE transaction_id='TX-OUT'")
    assert [r["seq_no"] for r in rows] == [0]
    await st.close()


async def test_a_known_token_is_known_whatever_its_case(gateway_factory: Any, monkeypatch: Any) -> None:
    """OCPP 2.0.1: an idToken is case-insensitive; readers write a UID's hex in either case."""
    from gateway.ocpp import handlers

    monkeypatch.setattr(handlers, "TOKEN_CACHE_S", 0.0)  # every answer from the database
    h = await gateway_factory(known_tokens_only=True)
    await h.add_station("CS-TC", PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-TC", PASSWORD)
    await h.gw.tokens.add("04a1b2c3", "ISO14443", h.gw.clock.now())
    for written in ("04a1b2c3", "04A1B2C3", "04A1b2C3"):
        reply = await st.ok("Authorize", {"idToken": {"idToken": written, "type": "ISO14443"}})
        assert reply["idTokenInfo"]["status"] == "Accepted", written
    reply = await st.ok("Authorize", {"idToken": {"idToken": "04A1B2C4", "type": "ISO14443"}})
    assert reply["idTokenInfo"]["status"] == "Unknown"
    await st.close()


async def test_authorize_during_an_outage_answers_a_token_it_has_seen_before(
    gateway_factory: Any, proxy_and_url: tuple[Any, str], monkeypatch: Any
) -> None:
    from gateway.ocpp import handlers

    proxy, url = proxy_and_url
    h, st = await _known_tokens_behind_proxy(gateway_factory, url, "CS-AU")
    await h.gw.tokens.add("KNOWN-AU", "ISO14443", h.gw.clock.now())
    known = {"idToken": {"idToken": "KNOWN-AU", "type": "ISO14443"}}
    assert (await st.ok("Authorize", known))["idTokenInfo"]["status"] == "Accepted"
    monkeypatch.setattr(handlers, "TOKEN_CACHE_S", 0.0)  # every answer now asks the database
    await proxy.cut()
    # The last answer for a token it has seen, instead of InternalError...
    assert (await st.ok("Authorize", known))["idTokenInfo"]["status"] == "Accepted"
    # ...and for one it has never seen there is no answer to give.
    reply = await st.call("Authorize", {"idToken": {"idToken": "NEVER-AU", "type": "ISO14443"}})
    assert reply[0] == 4 and reply[2] == "InternalError"
    await proxy.restore()
    assert (await st.ok("Authorize", known))["idTokenInfo"]["status"] == "Accepted"
    await st.close()


async def test_authorize_during_an_outage_refuses_an_answer_older_than_allowed(
    gateway_factory: Any, proxy_and_url: tuple[Any, str], monkeypatch: Any
) -> None:
    from gateway.ocpp import handlers

    proxy, url = proxy_and_url
    h, st = await _known_tokens_behind_proxy(gateway_factory, url, "CS-AV", authorize_stale_max_s=0.0)
    await h.gw.tokens.add("KNOWN-AV", "ISO14443", h.gw.clock.now())
    known = {"idToken": {"idToken": "KNOWN-AV", "type": "ISO14443"}}
    assert (await st.ok("Authorize", known))["idTokenInfo"]["status"] == "Accepted"
    monkeypatch.setattr(handlers, "TOKEN_CACHE_S", 0.0)
    await proxy.cut()
    # The database's last answer is older than authorize_stale_max_s: no answer to give.
    reply = await st.call("Authorize", known)
    assert reply[0] == 4 and reply[2] == "InternalError"
    await proxy.restore()
    assert (await st.ok("Authorize", known))["idTokenInfo"]["status"] == "Accepted"
    await st.close()


# --- 6: a commit whose result was lost still applies its side effects, exactly once ---


async def test_commit_with_lost_result_applies_side_effects_once(gateway_server: GatewayHarness) -> None:
    h = gateway_server
    assert h.gw is not None
    await h.add_station("CS-A", PASSWORD)
    sub = h.gw.bus.subscribe(ev.SessionStarted, ev.SessionUpdated, ev.SessionEnded)
    repo = h.gw.transactions
    real = repo.record_event
    lost = 0

    async def result_lost_once(*a: Any, **k: Any) -> Recorded:
        nonlocal lost
        recorded = await real(*a, **k)  # committed...
        if lost == 0:
            lost += 1
            raise ConnectionResetError("connection lost before the result arrived")  # ...reply lost
        return recorded

    repo.record_event = result_lost_once  # type: ignore[method-assign]
    st = await RawStation.connect(h.ocpp_url, "CS-A", PASSWORD)
    p = tx_event("Started", 0, tid="TX-AMB", meterValue=energy(1_000.0))
    first = await st.call("TransactionEvent", p)
    assert first[0] == 3 and lost == 1

    async def one_meter_row() -> bool:
        return len(await fetch(h.database_url, "SELECT 1 FROM meter_values WHERE transaction_id='TX-AMB'")) == 1

    await wait_for(one_meter_row)
    published = [type(sub.queue.get_nowait()) for _ in range(sub.queue.qsize())]
    assert published == [ev.SessionStarted, ev.SessionUpdated]
    assert h.gw.handlers.active_tx == {("CS-A", 1): "TX-AMB"}
    session = h.gw.state.evse("CS-A", 1).session
    assert session is not None and session.transaction_id == "TX-AMB"

    # The station replays the event with a new message id (its reply was lost): the first
    # answer again, nothing stored, nothing published, no second meter row.
    again = await st.call("TransactionEvent", p, message_id="replay-1")
    assert again[0] == 3 and again[2] == first[2]
    await h.gw.telemetry.flush()
    assert await one_meter_row()
    assert sub.queue.qsize() == 0
    rows = await fetch(h.database_url, "SELECT 1 FROM transaction_events WHERE transaction_id='TX-AMB'")
    assert len(rows) == 1
    await st.close()


class _FirstCommitLost:
    """record_event whose first call commits and loses its result with the database, and whose
    later calls find the database away until ``back`` is set."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls, self.back = real, 0, asyncio.Event()

    async def __call__(self, *a: Any, **k: Any) -> Recorded:
        self.calls += 1
        if self.calls == 1:
            await self.real(*a, **k)
            raise ConnectionResetError("connection lost before the result arrived")
        if not self.back.is_set():
            raise ConnectionRefusedError("the database is away")
        recorded: Recorded = await self.real(*a, **k)
        return recorded


async def _closed_while_withheld(h: GatewayHarness, station_id: str, tid: str
                                 ) -> tuple[Any, dict[str, Any], tuple[str, str, int], _FirstCommitLost]:
    """A station's Started event whose first attempt committed with its result lost; the
    database stays away, the station's socket closes, and the event is left to the background."""
    assert h.gw is not None
    await h.add_station(station_id, PASSWORD)
    sub = h.gw.bus.subscribe(ev.SessionStarted, ev.SessionUpdated, ev.SessionEnded)
    db = _FirstCommitLost(h.gw.transactions.record_event)
    h.gw.transactions.record_event = db  # type: ignore[method-assign]
    st = await RawStation.connect(h.ocpp_url, station_id, PASSWORD)
    p = tx_event("Started", 0, tid=tid, meterValue=energy(1_000.0))
    pending = asyncio.create_task(st.call("TransactionEvent", p))

    async def retrying() -> bool:
        return db.calls >= 2

    await wait_for(retrying)
    await st.close()
    pending.cancel()
    key = (station_id, tid, 0)

    async def in_background() -> bool:
        return h.gw is not None and key in h.gw.handlers._finishing

    await wait_for(in_background)
    return sub, p, key, db


async def test_a_withheld_event_whose_connection_closed_is_stored_and_applied_once(
        gateway_server: GatewayHarness) -> None:
    """D5 with the station gone: the event's first attempt committed, its result was lost with
    the database, and the database stays away. When the station's socket closes the reply is
    given up (it has nowhere to go) but the event is not: it is finished in the background once
    the database is back, its side effects applied once, also if the station never sends it
    again; the station's replay then gets the first answer and publishes nothing."""
    h = gateway_server
    assert h.gw is not None
    sub, p, key, db = await _closed_while_withheld(h, "CS-GONE", "TX-GONE")
    assert sub.queue.qsize() == 0  # nothing applied while the database is away

    db.back.set()  # the station does not come back: the event is finished all the same

    async def applied() -> bool:
        return sub.queue.qsize() >= 2 and key not in h.gw.handlers._finishing

    await wait_for(applied)
    published = [type(sub.queue.get_nowait()) for _ in range(sub.queue.qsize())]
    assert published == [ev.SessionStarted, ev.SessionUpdated]
    assert h.gw.handlers.active_tx == {("CS-GONE", 1): "TX-GONE"}

    async def one_meter_row() -> bool:
        return len(await fetch(h.database_url, "SELECT 1 FROM meter_values WHERE transaction_id='TX-GONE'")) == 1

    await wait_for(one_meter_row)
    # The station's replay: the first answer, nothing published, nothing stored twice.
    st = await RawStation.connect(h.ocpp_url, "CS-GONE", PASSWORD)
    again = await st.call("TransactionEvent", p, message_id="replay-gone")
    assert again[0] == 3
    await h.gw.telemetry.flush()
    assert await one_meter_row()
    assert sub.queue.qsize() == 0
    rows = await fetch(h.database_url, "SELECT 1 FROM transaction_events WHERE transaction_id='TX-GONE'")
    assert len(rows) == 1
    await st.close()


async def test_a_replay_that_learns_the_row_first_applies_what_the_stopped_call_stored(
        gateway_server: GatewayHarness) -> None:
    """The other order: the stopped call's background attempts are still failing when the
    station's replay, on a new connection, finds the row that call's lost attempt committed. The
    replay applies its side effects (the row carries a time this process gave), once."""
    h = gateway_server
    assert h.gw is not None
    sub, p, key, db = await _closed_while_withheld(h, "CS-GONE2", "TX-GONE2")
    # The background attempts sleep in their back-off; the replay's reach the database.
    db.back.set()
    st = await RawStation.connect(h.ocpp_url, "CS-GONE2", PASSWORD)
    again = await st.call("TransactionEvent", p, message_id="replay-gone2")
    assert again[0] == 3

    async def settled() -> bool:
        return key not in h.gw.handlers._finishing

    await wait_for(settled)
    published = [type(sub.queue.get_nowait()) for _ in range(sub.queue.qsize())]
    assert published == [ev.SessionStarted, ev.SessionUpdated]
    assert h.gw.handlers.active_tx == {("CS-GONE2", 1): "TX-GONE2"}
    await st.close()


async def test_an_event_being_stored_is_never_forgotten_however_many_are_kept(
        gateway_server: GatewayHarness, station: RawStation, monkeypatch: Any) -> None:
    """Which call stored an event is remembered for a bounded number of events no call is storing
    any more (a call that failed), never for one being stored: a fleet larger than the bound, in
    the middle of its calls during an outage, must not have its events taken for replays (no
    SessionStarted, samples left in the payload)."""
    from gateway.ocpp import handlers as handlers_module

    h = gateway_server
    assert h.gw is not None
    monkeypatch.setattr(handlers_module, "CALLS_KEPT", 0)
    sub = h.gw.bus.subscribe(ev.SessionStarted)
    assert (await station.call("TransactionEvent", tx_event("Started", 0, tid="TX-KEPT")))[0] == 3
    started = await asyncio.wait_for(sub.queue.get(), EVENT_TIMEOUT_S)
    assert isinstance(started, ev.SessionStarted) and started.transaction_id == "TX-KEPT"

    real = h.gw.transactions.record_event

    async def broken(*a: Any, **k: Any) -> Recorded:
        raise ValueError("not a database outage: the call fails")

    h.gw.transactions.record_event = broken  # type: ignore[method-assign]
    failed = await station.call("TransactionEvent", tx_event("Started", 0, tid="TX-FAILS"))
    assert failed[0] == 4
    assert h.gw.handlers._calls == {}  # a failed call's times are the bounded kind
    h.gw.transactions.record_event = real  # type: ignore[method-assign]


async def test_a_replay_of_an_event_a_dead_process_stored_restores_its_meter_samples(
        gateway_server: GatewayHarness) -> None:
    """D4, killed between commit and reply: the event row was committed, its samples were still
    in that process's telemetry buffer. The station's replay reaching the new process gets the
    first answer and the samples reach meter_values, once however often it is replayed."""
    from datetime import timedelta

    h = gateway_server
    assert h.gw is not None
    await h.add_station("CS-DEAD", PASSWORD)
    p = tx_event("Started", 0, tid="TX-DEAD", meterValue=energy(1_000.0, power_w=7_000.0))
    # What the dead process left: the committed event, stamped with its time, and no samples.
    earlier = h.gw.clock.now() - timedelta(minutes=2)
    await h.gw.transactions.record_event("CS-DEAD", p, {}, earlier)
    st = await RawStation.connect(h.ocpp_url, "CS-DEAD", PASSWORD)
    sql = "SELECT measurand FROM meter_values WHERE transaction_id='TX-DEAD' ORDER BY measurand"

    async def restored() -> bool:
        return len(await fetch(h.database_url, sql)) == 2

    for n in range(3):
        reply = await st.call("TransactionEvent", p, message_id=f"replay-{n}")
        assert reply[0] == 3 and reply[2] == {}
        await wait_for(restored)
        await h.gw.telemetry.flush()
    rows = await fetch(h.database_url, sql)
    assert [r["measurand"] for r in rows] == ["Energy.Active.Import.Register", "Power.Active.Import"]
    # An event this process stored itself is not looked at again (its samples were queued).
    p1 = tx_event("Updated", 1, tid="TX-DEAD", meterValue=energy(2_000.0, ts="2026-07-01T08:05:00Z"))
    await st.ok("TransactionEvent", p1)
    await st.call("TransactionEvent", p1, message_id="replay-own")
    await h.gw.telemetry.flush()
    assert len(await fetch(h.database_url, sql)) == 3
    await st.close()


async def test_a_replay_restores_the_samples_a_dead_process_flushed_only_in_part(
        gateway_server: GatewayHarness) -> None:
    """D4, a flush batch that ended inside one event's samples: the one that reached meter_values
    stays once, the one that died with the process is restored."""
    from datetime import timedelta

    h = gateway_server
    assert h.gw is not None
    await h.add_station("CS-PART", PASSWORD)
    p = tx_event("Started", 0, tid="TX-PART", meterValue=energy(1_000.0, power_w=7_000.0))
    await h.gw.transactions.record_event("CS-PART", p, {}, h.gw.clock.now() - timedelta(minutes=2))
    await fetch(h.database_url, "INSERT INTO meter_values (ts, station_id, evse_id, transaction_id, measurand, value, "
                "unit) VALUES ($1, 'CS-PART', 1, 'TX-PART', 'Energy.Active.Import.Register', 1000.0, 'Wh')",
                parse_rfc3339(p["meterValue"][0]["timestamp"]))
    st = await RawStation.connect(h.ocpp_url, "CS-PART", PASSWORD)
    sql = "SELECT measurand FROM meter_values WHERE transaction_id='TX-PART' ORDER BY measurand"

    async def restored() -> bool:
        return len(await fetch(h.database_url, sql)) >= 2

    reply = await st.call("TransactionEvent", p, message_id="replay")
    assert reply[0] == 3 and reply[2] == {}
    await wait_for(restored)
    await h.gw.telemetry.flush()
    rows = await fetch(h.database_url, sql)
    assert [r["measurand"] for r in rows] == ["Energy.Active.Import.Register", "Power.Active.Import"]
    await st.close()


# --- 3, 8: valid JSON / schema-valid input no handler can take: the CALLERROR, socket alive ---


async def test_lone_surrogates_are_refused_and_the_socket_lives(station: RawStation) -> None:
    # An id that is not text is unreadable: "-1" (Part 4 §4.2.3), and the reply is sendable.
    reply = await station.send_raw('[2,"\\ud800","Heartbeat",{}]', "-1")
    assert reply is not None and reply[:3] == [4, "-1", "RpcFrameworkError"]
    await _alive(station)
    reply = await station.send_raw('[2,"m-act","Heart\\udc00",{}]', "m-act")
    assert reply is not None and reply[:3] == [4, "m-act", "RpcFrameworkError"]
    frame = tx_event("Started", 0, tid="TX-SURR")
    text = json.dumps([2, "m-surr", "TransactionEvent", frame]).replace("TX-SURR", "TX-\\ud800")
    reply = await station.send_raw(text, "m-surr")
    assert reply is not None and reply[:3] == [4, "m-surr", "FormatViolation"]
    await _alive(station)


async def test_schema_valid_timestamps_out_of_range_are_property_violations(station: RawStation) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("TransactionEvent", tx_event("Started", 0, tid="TX-Y0", timestamp="0000-01-01T00:00:00Z")),
        ("StatusNotification", {"timestamp": "9999-12-31T23:59:59-01:00", "connectorStatus": "Available",
                                "evseId": 1, "connectorId": 1}),
        ("SecurityEventNotification", {"type": "x", "timestamp": "0001-01-01T00:00:00+01:00"}),
        ("MeterValues", {"evseId": 1, "meterValue": energy(1.0, ts="0000-06-01T00:00:00Z")}),
    ]
    for action, payload in cases:
        reply = await station.call(action, payload)
        assert reply[0] == 4 and reply[2] == "PropertyConstraintViolation", (action, reply)
        await _alive(station)
    # The edges that a datetime can hold are fine.
    ok = tx_event("Started", 1, tid="TX-EDGE", timestamp="9999-12-31T23:59:60Z")
    assert (await station.call("TransactionEvent", ok))[0] == 3


async def test_numbers_no_float_can_hold_and_deep_nesting_are_refused(station: RawStation) -> None:
    raw = json.dumps([2, "m-big", "TransactionEvent", tx_event("Started", 0, tid="TX-BIG", meterValue=energy(123.0))])
    reply = await station.send_raw(raw.replace('"value": 123.0', '"value": 1e400'), "m-big")
    assert reply is not None and reply[:3] == [4, "m-big", "PropertyConstraintViolation"]
    await _alive(station)
    # An integer past Python's 4,300-digit conversion limit is valid JSON out of range too: it
    # was answered as unreadable JSON under "-1".
    raw = json.dumps([2, "m-long", "DataTransfer", {"vendorId": "v", "data": 7}])
    reply = await station.send_raw(raw.replace('"data": 7', '"data": ' + "9" * 4301), "m-long")
    assert reply is not None and reply[:3] == [4, "m-long", "PropertyConstraintViolation"]
    await _alive(station)
    for depth in (100, 500, 960, 985):
        mid = f"deep-{depth}"
        frame = _nested(mid, depth)
        reply = await _reply_by_id_or_unreadable(station, frame, mid)
        # Past the bound: FormatViolation with the id; where the JSON parser itself runs out of
        # stack first (how deep depends on the caller's stack), RpcFrameworkError "-1". Never
        # InternalError, and never a crash on the way to Postgres.
        assert reply[:3] in ([4, mid, "FormatViolation"], [4, "-1", "RpcFrameworkError"]), (depth, reply)
        await _alive(station)
    shallow = _nested("ok-30", 30)
    reply = await station.send_raw(shallow, "ok-30")
    assert reply is not None and reply[0] == 3


async def test_a_station_that_does_not_wait_for_answers_is_refused_beyond_a_bound(
        gateway_server: GatewayHarness, station: RawStation) -> None:
    """Part 4 §4.1.1: one CALL at a time. While a handler waits (here held), a station that keeps
    sending gets its CALLs queued up to a bound and then answered at once with GenericError; the
    socket lives and the queued ones are answered in order."""
    from gateway.ocpp.protocol import INCOMING_QUEUED_MAX

    h = gateway_server
    assert h.gw is not None
    entered, release = asyncio.Event(), asyncio.Event()
    real = h.gw.handlers._table["DataTransfer"]

    async def held(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        await release.wait()
        return await real(ctx, p)

    h.gw.handlers._table["DataTransfer"] = held
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(station.call("DataTransfer", {"vendorId": "v"}, message_id="held"))
    await asyncio.wait_for(entered.wait(), EVENT_TIMEOUT_S)
    replies = {f"hb-{i}": loop.create_future() for i in range(INCOMING_QUEUED_MAX + 8)}
    station._replies.update(replies)
    for mid in replies:
        await station.ws.send(json.dumps([2, mid, "Heartbeat", {}]))
    done, _ = await asyncio.wait(list(replies.values())[INCOMING_QUEUED_MAX:], timeout=EVENT_TIMEOUT_S)
    assert len(done) == 8
    assert all(f.result()[0] == 4 and f.result()[2] == "GenericError" for f in done)
    assert not any(f.done() for f in list(replies.values())[:INCOMING_QUEUED_MAX])
    release.set()
    assert (await asyncio.wait_for(first, EVENT_TIMEOUT_S))[0] == 3
    answered = await asyncio.wait_for(asyncio.gather(*list(replies.values())[:INCOMING_QUEUED_MAX]), EVENT_TIMEOUT_S)
    assert all(r[0] == 3 for r in answered)
    await _alive(station)


async def test_an_evse_that_cannot_exist_is_refused_not_kept(
        gateway_server: GatewayHarness, station: RawStation) -> None:
    """Schema-valid evseIds no station has (0 where an EVSE is meant, negative, past any real
    station's count) used to create an EVSE the gateway kept, planned and divided the site's
    limit by, in memory and in the database, for good."""
    h = gateway_server
    assert h.gw is not None
    before = set(h.gw.state.evses)
    for evse_id in (0, -7, 999_999, 2_147_483_647):
        reply = await station.call("StatusNotification", {
            "timestamp": "2026-07-01T08:00:00Z", "connectorStatus": "Available", "evseId": evse_id, "connectorId": 1})
        assert reply[0] == 4 and reply[2] == "PropertyConstraintViolation", reply
    bad_tx = tx_event("Started", 0, tid="TX-EVSE0", evse={"id": 0})
    assert (await station.call("TransactionEvent", bad_tx))[2] == "PropertyConstraintViolation"
    # The station's main meter (evseId 0) is fine in MeterValues.
    assert (await station.call("MeterValues", {"evseId": 0, "meterValue": energy(1.0)}))[0] == 3
    assert set(h.gw.state.evses) == before
    assert not await fetch(h.database_url, "SELECT 1 FROM evses WHERE evse_id <> 1 AND station_id = 'CS-1'")
    await _alive(station)
