"""The power a batch of meter values reads (gateway/ocpp/meter.py summarize)."""

from __future__ import annotations

from gateway.ocpp.meter import samples, summarize


def _power(*mvs: tuple[str, str, float]) -> float | None:
    values = [{"timestamp": ts, "sampledValue": [{"value": v, "measurand": m}]} for ts, m, v in mvs]
    return summarize(list(samples(values))).power_w


def test_import_and_export_sampled_apart_by_milliseconds_are_one_reading() -> None:
    """Each measurand in its own meterValue, 10 ms apart: taken at the one latest timestamp, the
    7-kW import read as 0 W (and with 3 kW of export beside it, as -3 kW)."""
    assert _power(("2026-07-01T08:00:00.000Z", "Power.Active.Import", 7000.0),
                  ("2026-07-01T08:00:00.010Z", "Power.Active.Export", 0.0)) == 7000.0
    assert _power(("2026-07-01T08:00:00.000Z", "Power.Active.Import", 7000.0),
                  ("2026-07-01T08:00:00.010Z", "Power.Active.Export", 3000.0)) == 4000.0


def test_a_direction_without_a_reading_near_the_latest_counts_nothing() -> None:
    """An EVSE that turned to discharging reports export only: its last import, a minute old,
    is not the power now."""
    assert _power(("2026-07-01T08:00:00Z", "Power.Active.Import", 7000.0),
                  ("2026-07-01T08:01:00Z", "Power.Active.Export", 3000.0)) == -3000.0
    assert _power(("2026-07-01T08:00:00Z", "Power.Active.Import", 7000.0),
                  ("2026-07-01T08:01:00Z", "Power.Active.Import", 5000.0)) == 5000.0
