"""A registration written by another process (`gateway station add|disable`, another node's REST
API) reaches the running gateway through Postgres' NOTIFY: a station connected here gets its new
ratings, or its connection closed, at once rather than at its next connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway import events as ev
from gateway.db.engine import make_engine, sessionmaker
from gateway.db.stations import EvseRow, StationRepository
from gateway.ocpp.auth import hash_password
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.gateway.test_handlers import PASSWORD, fetch
from tests.ocpp_client import RawStation

NEW_PASSWORD = "a-new-password-of-24-chars"


@contextlib.asynccontextmanager
async def another_process(database_url: str) -> AsyncIterator[StationRepository]:
    """The station table as `gateway station ...` writes it: its own engine, not the gateway's."""
    engine = make_engine(database_url, pool_size=1)
    try:
        yield StationRepository(sessionmaker(engine))
    finally:
        await engine.dispose()


async def _until(check: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_TIMEOUT_S
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


async def _connected(h: GatewayHarness, station_id: str) -> RawStation:
    assert h.gw is not None
    await asyncio.wait_for(h.gw.station_changes.listening.wait(), EVENT_TIMEOUT_S)
    st = await RawStation.connect(h.ocpp_url, station_id, PASSWORD)
    gw = h.gw
    await _until(lambda: gw.ocpp.registry.get(station_id) is not None, "not connected")
    await _until(lambda: not gw._refreshes.pending(station_id), "registration not read at connection")
    return st


async def test_ratings_registered_by_another_process_apply_to_a_connected_station(gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    gw = h.gw
    await h.add_station("CS-CHG", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    st = await _connected(h, "CS-CHG")
    changed = gw.bus.subscribe(ev.SiteInputsChanged)
    async with another_process(h.database_url) as repo:
        same = (await repo.password_hashes(["CS-CHG"]))["CS-CHG"]  # as `station add` keeps it for the same password
        await repo.add("CS-CHG", same, evses=[EvseRow(1, 22.0, 11.0, True)], now=gw.clock.now())

    def rated() -> bool:
        e = gw.state.evses.get(("CS-CHG", 1))
        return e is not None and e.spec.max_charge_kw == 22.0

    await _until(rated, "the new ratings did not reach the connected station's EVSE")
    spec = gw.state.evses[("CS-CHG", 1)].spec
    assert (spec.max_discharge_kw, spec.bidirectional) == (11.0, True)
    assert (await asyncio.wait_for(changed.get(), EVENT_TIMEOUT_S)).what == "evses"  # planned again with them
    assert gw.ocpp.registry.get("CS-CHG") is not None  # a ratings change leaves the connection up
    changed.close()
    await st.close()


async def test_a_disable_by_another_process_closes_the_live_connection_and_an_enable_lets_it_back(
        gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    await h.add_station("CS-OFF", PASSWORD)
    st = await _connected(h, "CS-OFF")
    async with another_process(h.database_url) as repo:
        assert await repo.set_enabled("CS-OFF", False)
        try:
            await asyncio.wait_for(st.ws.wait_closed(), EVENT_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError("the disabled station's connection stayed up") from None
        assert st.ws.close_code == 1008
        # Enabled again elsewhere: this node does not keep it out for its shut-out window.
        assert await repo.set_enabled("CS-OFF", True)
    gw = h.gw
    await _until(lambda: not gw._refreshes.pending("CS-OFF"), "the enable was not read")
    back = await RawStation.connect(h.ocpp_url, "CS-OFF", PASSWORD)
    try:
        assert "currentTime" in await asyncio.wait_for(back.ok("Heartbeat", {}), EVENT_TIMEOUT_S)
    except ConnectionClosed:
        raise AssertionError("the station enabled again was still shut out") from None
    await back.close()


async def _closed(st: RawStation, what: str) -> None:
    try:
        await asyncio.wait_for(st.ws.wait_closed(), EVENT_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(what) from None
    assert st.ws.close_code == 1008


async def test_a_password_replaced_elsewhere_ends_the_session_logged_in_with_the_old_one(
        gateway_factory: Any) -> None:
    """A password is replaced because it leaked: a session opened with it ends at once, and only
    the new one logs in again."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    await h.add_station("CS-PW", PASSWORD)
    st = await _connected(h, "CS-PW")
    async with another_process(h.database_url) as repo:
        await repo.add("CS-PW", hash_password(NEW_PASSWORD), now=h.gw.clock.now())
    await _closed(st, "the session logged in with the replaced password stayed up")
    events: list[Any] = []

    async def recorded() -> bool:  # written in the background
        events[:] = await fetch(h.database_url, "SELECT kind FROM security_events WHERE station_id = 'CS-PW'")
        return bool(events)

    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while not await recorded():
            await asyncio.sleep(0.02)
    assert [r["kind"] for r in events] == ["credentials_changed"]
    with pytest.raises(InvalidStatus):
        await RawStation.connect(h.ocpp_url, "CS-PW", PASSWORD)
    back = await RawStation.connect(h.ocpp_url, "CS-PW", NEW_PASSWORD)
    assert "currentTime" in await asyncio.wait_for(back.ok("Heartbeat", {}), EVENT_TIMEOUT_S)
    await back.close()


async def test_a_security_profile_raised_elsewhere_ends_a_session_it_no_longer_allows(gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    await h.add_station("CS-PROF", PASSWORD)
    st = await _connected(h, "CS-PROF")
    async with another_process(h.database_url) as repo:
        same = (await repo.password_hashes(["CS-PROF"]))["CS-PROF"]
        await repo.add("CS-PROF", same, security_profile=2, now=h.gw.clock.now())  # TLS from now on
    await _closed(st, "a profile 1 session stayed up on a station registered for profile 2")
    with pytest.raises(InvalidStatus):  # plain ws: refused
        await RawStation.connect(h.ocpp_url, "CS-PROF", PASSWORD)


async def test_a_read_older_than_the_login_does_not_end_the_session(gateway_factory: Any) -> None:
    """A read of the registration begun before the station's login says nothing about the
    terms it logged in on (a read of the new password may have been the login's own)."""
    import time

    from gateway.ocpp.ports import StationCredentials

    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    server = h.gw.ocpp
    before = time.monotonic()
    await h.add_station("CS-OLD", PASSWORD)
    st = await _connected(h, "CS-OLD")
    other = StationCredentials("CS-OLD", hash_password(NEW_PASSWORD), 1, True)
    await server.check_terms("CS-OLD", other, before)
    assert "currentTime" in await asyncio.wait_for(st.ok("Heartbeat", {}), EVENT_TIMEOUT_S)
    # Begun after the login but stale (it ran before the login's own read, behind a busy pool):
    # the registration read again says the session's password is the one in force.
    await server.check_terms("CS-OLD", other, time.monotonic())
    assert "currentTime" in await asyncio.wait_for(st.ok("Heartbeat", {}), EVENT_TIMEOUT_S)
    await h.add_station("CS-OLD", NEW_PASSWORD)
    await server.check_terms("CS-OLD", other, time.monotonic())
    await _closed(st, "a read after the login that found another password left the session up")


async def test_a_station_admitted_unregistered_keeps_its_session_until_given_a_password(gateway_factory: Any) -> None:
    """DEV mode: the row its connection creates (no password) is what it logged in on; a
    password registered for it later ends the session."""
    h: GatewayHarness = await gateway_factory(allow_unknown_stations=True)
    assert h.gw is not None
    gw = h.gw
    st = await _connected(h, "CS-DEV")
    await _until(lambda: not gw.ocpp.observer.flag_writes.pending("CS-DEV"), "flag not written")
    assert (await fetch(h.database_url, "SELECT password_hash FROM stations WHERE id = 'CS-DEV'"))[0][0] is None
    gw.registration_changed("CS-DEV")  # read again, now that its row exists
    await _until(lambda: not gw._refreshes.pending("CS-DEV"), "registration not read")
    assert "currentTime" in await asyncio.wait_for(st.ok("Heartbeat", {}), EVENT_TIMEOUT_S)
    async with another_process(h.database_url) as repo:
        await repo.add("CS-DEV", hash_password(NEW_PASSWORD), now=gw.clock.now())
    await _closed(st, "a session without a password stayed up once the station had one")


async def test_registering_again_with_the_same_password_keeps_the_session(gateway_factory: Any) -> None:
    """`sim --register` run again (new ratings, the same password) keeps the stored hash, so the
    connected station is re-rated without being sent away."""
    from gateway.db.admin import register_for_sim
    from gateway.domain import EvseSpec
    from gateway.episode import StationSpec

    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    gw = h.gw
    await h.add_station("CS-KEEP", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    st = await _connected(h, "CS-KEEP")
    live = gw.ocpp.registry.get("CS-KEEP")
    rerated = EvseSpec("CS-KEEP", 1, max_charge_kw=22.0, max_discharge_kw=0.0)
    await register_for_sim(h.database_url, [StationSpec("CS-KEEP", (rerated,))], PASSWORD)
    await _until(lambda: gw.state.evses[("CS-KEEP", 1)].spec.max_charge_kw == 22.0, "the new rating was not read")
    await _until(lambda: not gw._refreshes.pending("CS-KEEP"), "registration not read")
    assert gw.ocpp.registry.get("CS-KEEP") is live and not live.closed
    assert "currentTime" in await asyncio.wait_for(st.ok("Heartbeat", {}), EVENT_TIMEOUT_S)
    await st.close()


async def test_changes_made_while_not_listening_are_read_when_listening_again(gateway_factory: Any) -> None:
    """A NOTIFY sent while the listening connection is down is lost: listening again re-reads
    every station connected here."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    gw = h.gw
    await h.add_station("CS-MISS", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    st = await _connected(h, "CS-MISS")
    # Written with no notification (as one sent while no one listened), then the listening
    # connection is ended by the server.
    await fetch(h.database_url, "UPDATE evses SET max_charge_kw = 7.4 WHERE station_id = 'CS-MISS'")
    assert gw.state.evses[("CS-MISS", 1)].spec.max_charge_kw == 11.0
    ended = await fetch(h.database_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'gateway-station-changes' AND datname = current_database()")
    assert ended, "no listening connection found"
    await _until(lambda: gw.state.evses[("CS-MISS", 1)].spec.max_charge_kw == 7.4,
                 "the change made while not listening was not read")
    assert gw.station_changes.listening.is_set()
    await st.close()


async def test_a_nodes_start_clears_the_connected_flags_it_left_and_only_those(clean_db: str) -> None:
    """A node killed with stations connected left their flags set (`gateway station list` and
    MQTT's retained status said "connected" until each came back); another node's stay."""
    from gateway.app import Gateway
    from tests.conftest import gateway_settings

    async with another_process(clean_db) as repo:
        for sid in ("CS-MINE", "CS-THEIRS"):
            await repo.add(sid, hash_password(PASSWORD), now=datetime.now(UTC))
        await repo.set_connected("CS-MINE", True, datetime.now(UTC), "node-a")  # then node-a crashed
        await repo.set_connected("CS-THEIRS", True, datetime.now(UTC), "node-b")
        await repo.add("CS-OLD", hash_password(PASSWORD), now=datetime.now(UTC))
    # Set by a gateway from before 0014, which named no node.
    await fetch(clean_db, "UPDATE stations SET connected = true WHERE id = 'CS-OLD'")
    gw = Gateway(gateway_settings(clean_db, node_id="node-a"))
    said = gw.bus.subscribe(ev.StationDisconnected)
    await gw.start()
    try:
        rows = {r["id"]: (r["connected"], r["connected_node"]) for r in await fetch(
            clean_db, "SELECT id, connected, connected_node FROM stations")}
        assert rows == {"CS-MINE": (False, None), "CS-THEIRS": (True, "node-b"), "CS-OLD": (False, None)}
        told = [await asyncio.wait_for(said.get(), EVENT_TIMEOUT_S) for _ in range(2)]  # MQTT's retained status
        assert {e.station_id for e in told if isinstance(e, ev.StationDisconnected)} == {"CS-MINE", "CS-OLD"}
        assert said.queue.empty()
    finally:
        said.close()
        await gw.stop()


async def test_a_late_disconnect_on_one_node_leaves_the_flag_another_node_set(clean_db: str) -> None:
    now = datetime.now(UTC)
    async with another_process(clean_db) as repo:
        await repo.add("CS-MOVED", hash_password(PASSWORD), now=now)
        await repo.set_connected("CS-MOVED", True, now, "node-a")
        await repo.set_connected("CS-MOVED", True, now, "node-b")  # came back through node-b
        await repo.set_connected("CS-MOVED", False, now, "node-a")  # node-a sees its old socket close
        row = await repo.get("CS-MOVED")
        assert row is not None and row.connected
        await repo.set_connected("CS-MOVED", False, now, "node-b")
        row = await repo.get("CS-MOVED")
        assert row is not None and not row.connected


async def test_an_older_connections_write_landing_late_leaves_the_newer_ones_flag(clean_db: str) -> None:
    """Each write carries when its connection was opened: node-a's write for the station's older
    connection, landing after node-b's for the newer one (a slow pool, a database blip), changes
    nothing, nor does its disconnect, nor an older connection's disconnect on one node."""
    from datetime import timedelta

    now = datetime.now(UTC)
    older, newer = now, now + timedelta(seconds=2)

    async def flag() -> tuple[bool, str | None]:
        row = await repo.get("CS-LATE")
        assert row is not None
        return row.connected, row.connected_node

    async with another_process(clean_db) as repo:
        await repo.add("CS-LATE", hash_password(PASSWORD), now=now)
        await repo.set_connected("CS-LATE", True, now, "node-b", newer)
        await repo.set_connected("CS-LATE", True, now, "node-a", older)  # late
        assert await flag() == (True, "node-b")
        await repo.set_connected("CS-LATE", False, now, "node-a", older)
        assert await flag() == (True, "node-b")
        await repo.set_connected("CS-LATE", False, now, "node-b", older)  # node-b's own older connection
        assert await flag() == (True, "node-b")
        await repo.set_connected("CS-LATE", False, now, "node-b", newer)
        assert await flag() == (False, None)
        await repo.set_connected("CS-LATE", True, now, "node-a", older)  # older than the last one: late too
        assert await flag() == (False, None)
        await repo.set_connected("CS-LATE", True, now, "node-a", newer + timedelta(seconds=1))
        assert await flag() == (True, "node-a")


async def test_the_listener_connects_with_the_pools_adapter_options(clean_db: str, gateway_factory: Any) -> None:
    """A URL option only SQLAlchemy's adapter takes (``prepared_statement_cache_size``, set behind
    PgBouncer) kept the listener from ever connecting, silently but for a warning a minute."""
    from gateway import metrics

    sep = "&" if "?" in clean_db else "?"
    h: GatewayHarness = await gateway_factory(database_url=f"{clean_db}{sep}prepared_statement_cache_size=0")
    assert h.gw is not None
    await asyncio.wait_for(h.gw.station_changes.listening.wait(), EVENT_TIMEOUT_S)
    assert metrics.REGISTRATIONS_LISTENING._value.get() == 1  # type: ignore[attr-defined]


async def test_a_credential_read_under_way_when_the_registration_changes_is_not_kept(gateway_factory: Any) -> None:
    """The login's read began before a new password was committed and ended after its
    notification: kept, the old hash would log in during the next outage."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    gw = h.gw
    await h.add_station("CS-RACEPW", PASSWORD)
    real = gw.stations.credentials
    reading, release = asyncio.Event(), asyncio.Event()

    async def slow(station_id: str) -> Any:
        creds = await real(station_id)  # the old registration
        reading.set()
        await release.wait()
        return creds

    gw.stations.credentials = slow  # type: ignore[method-assign]
    login = asyncio.create_task(RawStation.connect(h.ocpp_url, "CS-RACEPW", PASSWORD))
    await asyncio.wait_for(reading.wait(), EVENT_TIMEOUT_S)
    gw.registration_changed("CS-RACEPW")  # the new password's notification, mid-read
    release.set()
    st = await asyncio.wait_for(login, EVENT_TIMEOUT_S)
    assert "CS-RACEPW" not in gw.ocpp._creds_read
    gw.stations.credentials = real  # type: ignore[method-assign]
    await st.close()


async def test_an_enable_read_before_a_disable_does_not_lift_it(gateway_factory: Any) -> None:
    import time

    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    server = h.gw.ocpp
    read_from = time.monotonic()  # a read of the station, found enabled...
    await server.shut_out("CS-LATER")  # ...then a disable lands
    server.let_in("CS-LATER", enabled_as_of=read_from)
    assert "CS-LATER" in server._shut_out
    server.let_in("CS-LATER", enabled_as_of=time.monotonic())  # a read after it found it enabled again
    assert "CS-LATER" not in server._shut_out


async def test_two_nodes_on_one_database_see_and_disable_each_others_stations(gateway_factory: Any) -> None:
    """A station connected to node A is shown connected (through A) by node B's REST API, and
    B's disable closes it on A."""
    import httpx

    from tests.api.conftest import OPERATOR

    a: GatewayHarness = await gateway_factory(node_id="node-a")
    b: GatewayHarness = await gateway_factory(node_id="node-b")
    assert a.gw is not None and b.gw is not None
    await asyncio.wait_for(b.gw.station_changes.listening.wait(), EVENT_TIMEOUT_S)
    await a.add_station("CS-TWO", PASSWORD)
    st = await _connected(a, "CS-TWO")
    gw_a = a.gw
    await _until(lambda: not gw_a.ocpp.observer.flag_writes.pending("CS-TWO"), "flag not written")
    async with httpx.AsyncClient(base_url=b.api_url, timeout=EVENT_TIMEOUT_S) as api:
        seen = (await api.get("/api/v1/stations/CS-TWO", headers=OPERATOR)).json()
        assert (seen["connected"], seen["connected_node"]) == (True, "node-a")
        r = await api.post("/api/v1/stations/CS-TWO/disable", headers=OPERATOR)
        assert r.status_code == 200, r.text
    try:
        await asyncio.wait_for(st.ws.wait_closed(), EVENT_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError("node B's disable left the connection on node A up") from None
    assert st.ws.close_code == 1008


async def test_registering_for_the_simulator_sets_what_a_simulated_station_needs(clean_db: str) -> None:
    """`sim --register` over an id an operator registered otherwise: its stations log in with
    Basic auth over ws and take negative limits, so those are set again (not kept)."""
    from gateway.db.admin import register_for_sim
    from gateway.domain import EvseSpec
    from gateway.episode import StationSpec

    async with another_process(clean_db) as repo:
        await repo.add("CS-SIM", None, security_profile=3, discharge_dialect="none", discharge_undeclared_evs=True,
                       now=datetime.now(UTC))
    await register_for_sim(clean_db, [StationSpec("CS-SIM", (EvseSpec("CS-SIM", 1, 11.0, 11.0, True),))], PASSWORD)
    rows = await fetch(clean_db, "SELECT security_profile, discharge_dialect, discharge_undeclared_evs, "
                                 "password_hash IS NOT NULL AS has_password FROM stations")
    assert [tuple(r) for r in rows] == [(1, "negative_limit", None, True)]
