"""State of charge: percent on the wire, in the transactions table, in SessionUpdated and on the
bus; 0..1 in Session / SiteState. Converted once, by unit, never guessed from the magnitude."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway import events as ev
from gateway.config import Settings
from gateway.ocpp.meter import samples, summarize
from gateway.state import SiteState
from tests.conftest import GatewayHarness
from tests.gateway.test_handlers import PASSWORD, energy, fetch, tx_event, wait_for
from tests.ocpp_client import RawStation

T = datetime(2026, 7, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize("percent", [45.0, 2.0, 1.0, 0.6, 0.0, 100.0])
def test_session_soc_is_the_percent_over_100(percent: float) -> None:
    s = SiteState.from_settings(Settings(database_url="postgresql+asyncpg://x@127.0.0.1/x"))
    s.apply(ev.SessionStarted(T, "CS1", 1, "T1", None))
    s.apply(ev.SessionUpdated(T, "CS1", 1, "T1", soc=percent))
    session = s.evse("CS1", 1).session
    assert session is not None and session.soc == pytest.approx(percent / 100.0)


def test_only_percent_soc_samples_are_read() -> None:
    def soc_of(*svs: dict[str, object]) -> float | None:
        return summarize(list(samples([{"timestamp": "2026-07-01T08:00:00Z", "sampledValue": list(svs)}]))).soc

    assert soc_of({"value": 1, "measurand": "SoC"}) == 1.0  # the unit defaults to Percent
    assert soc_of({"value": 0.6, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}}) == 0.6
    assert soc_of({"value": 0.6, "measurand": "SoC", "unitOfMeasure": {"unit": "Wh"}}) is None
    assert soc_of({"value": 140, "measurand": "SoC"}) is None  # not a percentage


async def test_one_percent_from_a_station_is_one_percent(gateway_server: GatewayHarness) -> None:
    h = gateway_server
    assert h.gw is not None
    await h.add_station("CS-S", PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-S", PASSWORD)
    await st.ok("TransactionEvent", tx_event("Started", 0, tid="TX-S", meterValue=energy(0.0, soc=1.0)))

    async def seen() -> bool:
        s = h.gw.state.evse("CS-S", 1).session if h.gw else None
        return s is not None and s.soc is not None

    await wait_for(seen)
    session = h.gw.state.evse("CS-S", 1).session
    assert session is not None and session.soc == pytest.approx(0.01)
    rows = await fetch(h.database_url, "SELECT last_soc FROM transactions WHERE transaction_id='TX-S'")
    assert rows[0]["last_soc"] == 1.0  # the table keeps percent
    await st.ok("MeterValues", {"evseId": 1, "meterValue": energy(10.0, soc=0.6)})

    async def updated() -> bool:
        s = h.gw.state.evse("CS-S", 1).session if h.gw else None
        return s is not None and s.soc == pytest.approx(0.006)

    await wait_for(updated)
    await st.close()

