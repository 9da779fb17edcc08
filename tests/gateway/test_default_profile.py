"""Every booted station gets a safe TxDefaultProfile before any plan exists."""

from __future__ import annotations

from typing import Any

from gateway.config import SiteConfig
from gateway.ocpp.defaults import default_limit_kw
from tests.conftest import GatewayHarness
from tests.gateway.test_handlers import PASSWORD
from tests.ocpp_client import RawStation


def test_default_limit_shares_the_site_limit() -> None:
    assert default_limit_kw(3.7, 500.0, 10) == 3.7
    assert default_limit_kw(3.7, 20.0, 10) == 2.0  # ten EVSEs at full default would break 20 kW
    assert default_limit_kw(3.7, 20.0, 0) == 3.7


async def test_boot_is_followed_by_a_safe_default_profile(gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory(site=SiteConfig(import_limit_kw=20.0), scheduler_enabled=True,
                                              replan_period_s=3600.0)
    for i in range(8):
        await h.add_station(f"CS-{i}", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    st = await RawStation.connect(h.ocpp_url, "CS-0", PASSWORD)
    boot = await st.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    assert boot["status"] == "Accepted"
    call = await st.next_call()
    assert call[2] == "SetChargingProfile"
    payload = call[3]
    assert payload["evseId"] == 0
    prof = payload["chargingProfile"]
    assert (prof["chargingProfilePurpose"], prof["chargingProfileKind"]) == ("TxDefaultProfile", "Relative")
    assert prof["chargingSchedule"][0]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 2500}]
    await st.answer(call, {"status": "Accepted"})
    await st.close()
