"""Meter samples from OCPP payloads (gateway/ocpp/meter.py): units where the station names none,
and readings no meter gives."""

from __future__ import annotations

import pytest

from gateway.ocpp.meter import samples


@pytest.mark.parametrize("measurand, unit", [
    ("Energy.Active.Import.Register", "Wh"), ("Energy.Reactive.Import.Register", "varh"),
    ("Energy.Apparent.Net", "VAh"), ("Power.Active.Import", "W"), ("Power.Reactive.Import", "var"),
    ("Power.Offered", "W"), ("Power.Factor", None), ("Current.Import", "A"), ("Voltage", "V"), ("Frequency", None),
])
def test_a_sample_without_a_unit_is_in_its_measurands_unit(measurand: str, unit: str | None) -> None:
    got = list(samples([{"timestamp": "2026-07-01T08:00:00Z",
                         "sampledValue": [{"value": 1.0, "measurand": measurand}]}]))
    assert [s.unit for s in got] == [unit]


def test_a_reading_no_meter_gives_is_skipped() -> None:
    """1.7e308 Wh passes the schema; the database's sums of readings (a transaction's energy, the
    REST averages) overflow on it, and the TransactionEvent it came with could never be stored."""
    got = list(samples([{"timestamp": "2026-07-01T08:00:00Z", "sampledValue": [
        {"value": -1.7e308}, {"value": 1.7e308}, {"value": 1.0e15}, {"value": 12.5}]}]))
    assert [s.value for s in got] == [1.0e15, 12.5]
