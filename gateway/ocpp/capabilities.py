"""What a station says it can do, read from its device model (OCPP 2.0.1 Part 2, GetVariables).

Read only when it matters: a station that refuses a charging profile with more than one period
may take at most ``SmartChargingCtrlr.PeriodsPerSchedule`` periods (a required variable of the
SmartChargingCtrlr component, Part 2 Appendix); the plan is then cut to that many rather than
left refused and replaced by a flat safe limit."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.ocpp.commands import VariableRef
from gateway.ocpp.errors import GatewayOcppError

if TYPE_CHECKING:
    from gateway.ocpp.commands import StationCommands

log = logging.getLogger(__name__)

PERIODS_PER_SCHEDULE = VariableRef("SmartChargingCtrlr", "PeriodsPerSchedule")


async def periods_per_schedule(commands: StationCommands, station_id: str) -> int | None:
    """The most periods a charging schedule may have on ``station_id``; ``None`` when the
    station does not say (no answer, a CALLERROR, the variable unknown, or not a positive
    whole number)."""
    try:
        resp = await commands.get_variables(station_id, [PERIODS_PER_SCHEDULE])
    except GatewayOcppError as exc:
        log.info("%s: PeriodsPerSchedule not read: %s", station_id, exc)
        return None
    for r in resp.get("getVariableResult") or []:
        if not isinstance(r, dict) or (r.get("variable") or {}).get("name") != PERIODS_PER_SCHEDULE.variable:
            continue
        value = r.get("attributeValue")
        if r.get("attributeStatus") != "Accepted" or not isinstance(value, str) or not value.strip().isdigit():
            log.info("%s: PeriodsPerSchedule not given (%s)", station_id, r.get("attributeStatus"))
            return None
        n = int(value.strip())
        return n if n >= 1 else None
    return None
