"""CPU per incoming OCPP frame on the receive path: parsing (``protocol.parse_frame``) and schema
plus primitive-rule validation (``validation.V201.check_station_call``) of one TransactionEvent with a
typical meter value, each in a loop.

    .venv/bin/python bench/frame_cost.py [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import time

from gateway.ocpp.protocol import parse_frame
from gateway.ocpp.validation import V201

PAYLOAD = {
    "eventType": "Updated", "timestamp": "2026-07-01T08:00:00Z", "triggerReason": "MeterValuePeriodic", "seqNo": 3,
    "transactionInfo": {"transactionId": "TX-000123", "chargingState": "Charging"},
    "evse": {"id": 1, "connectorId": 1},
    "meterValue": [{"timestamp": "2026-07-01T08:00:00Z", "sampledValue": [
        {"value": 12345.0, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}},
        {"value": 0.0, "measurand": "Energy.Active.Export.Register", "unitOfMeasure": {"unit": "Wh"}},
        {"value": 7400.0, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
        {"value": 55.0, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}}]}],
}


def per_call_us(fn: object, n: int) -> float:
    assert callable(fn)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    n = ap.parse_args().n
    text = json.dumps([2, "abc-123", "TransactionEvent", PAYLOAD])
    schemas = V201
    schemas.check_station_call("TransactionEvent", PAYLOAD)  # compile once, as the gateway does at start
    print(json.dumps({
        "parse_us": round(per_call_us(lambda: parse_frame(text), n), 2),
        "validate_us": round(per_call_us(lambda: schemas.check_station_call("TransactionEvent", PAYLOAD), n), 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
