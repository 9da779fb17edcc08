"""D5: Postgres goes away under a live station and comes back (a real TCP cut in front of it)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import EVENT_TIMEOUT_S
from tests.gateway.test_handlers import PASSWORD, energy, fetch, tx_event, wait_for
from tests.ocpp_client import RawStation


async def test_postgres_outage_withholds_replies_and_recovers(
    gateway_factory: Any, proxy_and_url: tuple[Any, str], clean_db: str
) -> None:
    proxy, url = proxy_and_url
    h = await gateway_factory(database_url=url, db_retry_interval_s=0.1)
    await h.add_station("CS-D", PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-D", PASSWORD)
    await st.ok("TransactionEvent", tx_event("Started", 0, tid="TX-D", meterValue=energy(0.0)))

    await proxy.cut()
    # The station stays connected and is answered where no durability is promised...
    assert "currentTime" in await st.ok("Heartbeat", {})
    await st.ok("StatusNotification", {"timestamp": "2026-07-01T08:01:00Z", "connectorStatus": "Occupied",
                                       "evseId": 1, "connectorId": 1})
    # ...but a TransactionEvent is not acknowledged while it cannot be committed.
    pending = asyncio.create_task(st.call("TransactionEvent", tx_event("Updated", 1, tid="TX-D",
                                                                        meterValue=energy(2_000.0))))
    await st.ok("MeterValues", {"evseId": 1, "meterValue": energy(2_500.0)})  # buffered, not lost

    async def retried() -> bool:
        from gateway import metrics

        return metrics.DB_RETRIES.labels("transaction_event")._value.get() > 0  # type: ignore[attr-defined]

    await wait_for(retried)
    assert not pending.done()
    assert h.gw.telemetry.buffered > 0

    await proxy.restore()
    reply = await asyncio.wait_for(pending, EVENT_TIMEOUT_S)
    assert reply[0] == 3
    rows = await fetch(clean_db, "SELECT seq_no FROM transaction_events WHERE transaction_id='TX-D' ORDER BY seq_no")
    assert [r["seq_no"] for r in rows] == [0, 1]

    async def backlog_cleared() -> bool:
        return h.gw.telemetry.buffered == 0 and len(await fetch(
            clean_db, "SELECT 1 FROM meter_values WHERE station_id='CS-D'")) == 3

    await wait_for(backlog_cleared)
    assert await fetch(clean_db, "SELECT status FROM status_history WHERE station_id='CS-D'")
    await st.close()


async def test_telemetry_buffer_is_bounded_and_counts_drops(
    gateway_factory: Any, proxy_and_url: tuple[Any, str], clean_db: str
) -> None:
    proxy, url = proxy_and_url
    h = await gateway_factory(database_url=url, meter_buffer_rows_max=50, meter_flush_rows=10)
    await h.add_station("CS-B", PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-B", PASSWORD)
    await proxy.cut()
    for i in range(80):
        await st.ok("MeterValues", {"evseId": 1, "meterValue": energy(float(i))})
    assert h.gw.telemetry.buffered == 50
    assert h.gw.telemetry.dropped["meter_values"] == 30
    await proxy.restore()

    async def written() -> bool:
        return len(await fetch(clean_db, "SELECT 1 FROM meter_values WHERE station_id='CS-B'")) == 50

    await wait_for(written)
    # The newest samples are the ones kept.
    rows = await fetch(clean_db, "SELECT min(value) AS lo, max(value) AS hi FROM meter_values WHERE station_id='CS-B'")
    assert (rows[0]["lo"], rows[0]["hi"]) == (30.0, 79.0)
    await st.close()


async def test_connections_the_server_ended_are_not_handed_out_again(gateway_factory: Any, clean_db: str) -> None:
    """Postgres ends every session of the gateway (a restart, an operator's pg_terminate_backend)
    and is back at once. A pooled connection that failed inside code using asyncpg directly (the
    telemetry COPY, TransactionEvent's SQL function) went back to the pool and was handed to
    every retry: replies withheld and meter values buffered while the database was up."""
    h = await gateway_factory(db_retry_interval_s=0.1)
    await h.add_station("CS-T", PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-T", PASSWORD)
    await st.ok("TransactionEvent", tx_event("Started", 0, tid="TX-T", meterValue=energy(0.0)))
    await st.ok("MeterValues", {"evseId": 1, "meterValue": energy(100.0)})

    async def written(n: int) -> bool:
        return len(await fetch(clean_db, "SELECT 1 FROM meter_values WHERE station_id='CS-T'")) == n

    await wait_for(lambda: written(2))
    await fetch(clean_db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    reply = await asyncio.wait_for(st.call("TransactionEvent", tx_event("Updated", 1, tid="TX-T",
                                                                         meterValue=energy(2_000.0))),
                                   EVENT_TIMEOUT_S)
    assert reply[0] == 3
    await st.ok("MeterValues", {"evseId": 1, "meterValue": energy(2_500.0)})
    await wait_for(lambda: written(4))
    await st.close()


async def test_a_station_reconnecting_while_the_database_is_away_gets_its_ratings_once_it_is_back(
    gateway_factory: Any, proxy_and_url: tuple[Any, str], clean_db: str
) -> None:
    """Its registration is read again once the database answers, not at its next connection (which
    may be days away)."""
    from gateway.db.admin import register_for_sim
    from gateway.domain import EvseSpec
    from gateway.episode import StationSpec

    proxy, url = proxy_and_url
    h = await gateway_factory(database_url=url, db_retry_interval_s=0.1)

    def rated(kw: float) -> list[StationSpec]:
        return [StationSpec("CS-R", (EvseSpec("CS-R", 1, max_charge_kw=kw, max_discharge_kw=0.0),))]

    async def planned_at(kw: float) -> bool:
        e = h.gw.state.evses.get(("CS-R", 1))
        return e is not None and e.spec.max_charge_kw == kw

    await register_for_sim(clean_db, rated(11.0), PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-R", PASSWORD)  # its credentials are cached now
    await wait_for(lambda: planned_at(11.0))
    await st.close()
    await proxy.cut()
    # Re-rated by another process while this gateway cannot hear it (its NOTIFY is lost).
    await register_for_sim(clean_db, rated(22.0), PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-R", PASSWORD)
    assert not await planned_at(22.0)
    await proxy.restore()
    await wait_for(lambda: planned_at(22.0))
    await st.close()


async def test_a_password_changed_by_another_process_is_never_checked_against_the_old_one(
    gateway_factory: Any, proxy_and_url: tuple[Any, str], clean_db: str
) -> None:
    """While the database is away a station logs in against its registration as last read; once
    any process changed that registration (a new password), the copy read before is dropped."""
    from websockets.exceptions import InvalidStatus

    from gateway.db.admin import register_for_sim
    from gateway.domain import EvseSpec
    from gateway.episode import StationSpec

    proxy, url = proxy_and_url
    h = await gateway_factory(database_url=url, db_retry_interval_s=0.1)
    spec = [StationSpec("CS-PW", (EvseSpec("CS-PW", 1, max_charge_kw=11.0, max_discharge_kw=0.0),))]
    await asyncio.wait_for(h.gw.station_changes.listening.wait(), EVENT_TIMEOUT_S)
    await register_for_sim(clean_db, spec, PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-PW", PASSWORD)  # its registration read at login
    await st.close()
    heard = h.gw.station_changes.heard
    await register_for_sim(clean_db, spec, "a-new-password-of-20chars")  # `gateway station add` again
    await wait_for(lambda: _true(h.gw.station_changes.heard > heard))
    await proxy.cut()
    try:
        old = await RawStation.connect(h.ocpp_url, "CS-PW", PASSWORD)
    except InvalidStatus as exc:
        assert exc.response.status_code == 503  # the registration cannot be read: try later
    else:
        await old.close()
        raise AssertionError("the old password was accepted after the change")
    await proxy.restore()


async def _true(value: bool) -> bool:
    return value
