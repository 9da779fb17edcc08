"""Reading what a station takes from its device model (gateway/ocpp/capabilities.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.ocpp.capabilities import periods_per_schedule
from gateway.ocpp.errors import CallErrorReceived, CallTimeout


class _Commands:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[Any] = []

    async def get_variables(self, station_id: str, variables: Any) -> Any:
        self.asked.append([(v.component, v.variable) for v in variables])
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _result(status: str, value: str | None = None, name: str = "PeriodsPerSchedule") -> dict[str, Any]:
    r: dict[str, Any] = {"attributeStatus": status, "component": {"name": "SmartChargingCtrlr"},
                         "variable": {"name": name}}
    if value is not None:
        r["attributeValue"] = value
    return {"getVariableResult": [r]}


@pytest.mark.parametrize("answer, expected", [
    (_result("Accepted", "3"), 3),
    (_result("Accepted", " 12 "), 12),
    (_result("Accepted", "0"), None),
    (_result("Accepted", "-2"), None),
    (_result("Accepted", "many"), None),
    (_result("UnknownVariable"), None),
    (_result("Accepted", "3", name="Enabled"), None),
    ({"getVariableResult": []}, None),
    ({}, None),
    (CallTimeout("CS-1", "GetVariables", 30.0), None),
    (CallErrorReceived("CS-1", "GetVariables", "NotImplemented", "", None), None),
])
async def test_periods_per_schedule_is_a_positive_whole_number_or_nothing(answer: Any, expected: int | None) -> None:
    commands = _Commands(answer)
    assert await periods_per_schedule(commands, "CS-1") == expected  # type: ignore[arg-type]
    assert commands.asked == [[("SmartChargingCtrlr", "PeriodsPerSchedule")]]
