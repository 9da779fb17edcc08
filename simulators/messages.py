"""Wire payloads the simulated station sends (OCPP 2.0.1 JSON, camelCase). Pure: no I/O.

Only fields the 2.0.1 schemas allow are produced; the station sends them through the ``ocpp``
package, which validates each against its schema before it leaves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.clock import to_rfc3339
from simulators.composite import VOLTAGE_V
from simulators.evse import EvseState


def _sv(value: float, measurand: str, unit: str, context: str, location: str = "Outlet") -> dict[str, Any]:
    return {
        "value": round(value, 3),
        "measurand": measurand,
        "context": context,
        "location": location,
        "unitOfMeasure": {"unit": unit},
    }


def meter_value(evse: EvseState, when: datetime, context: str) -> dict[str, Any]:
    """One MeterValue: energy registers (Wh), power (W) and, with an EV, its SoC (%).

    Power.Active.Import is the import power (never negative); discharge shows in
    Power.Active.Export, as a bidirectional meter reports it.
    """
    p_w = evse.power_kw * 1000.0
    samples = [
        _sv(evse.import_wh, "Energy.Active.Import.Register", "Wh", context),
        _sv(evse.export_wh, "Energy.Active.Export.Register", "Wh", context),
        _sv(max(p_w, 0.0), "Power.Active.Import", "W", context),
    ]
    if evse.spec.bidirectional:
        samples.append(_sv(max(-p_w, 0.0), "Power.Active.Export", "W", context))
    if evse.session is not None:
        samples.append(_sv(evse.session.battery.soc * 100.0, "SoC", "Percent", context, location="EV"))
    return {"timestamp": to_rfc3339(when), "sampledValue": samples}


def id_token(token: str, iso15118: bool) -> dict[str, Any]:
    # Plug & Charge EVs identify with their contract id (eMAID); others with an RFID card.
    return {"idToken": token[:36], "type": "eMAID" if iso15118 else "ISO14443"}


V2X_VENDOR_ID = "org.ocpp-site-gateway.v2x"  # see gateway/ocpp/handlers.py needs_from_payload


def charging_needs(evse: EvseState, departure: datetime | None, energy_kwh: float) -> dict[str, Any]:
    """NotifyEVChargingNeeds.chargingNeeds for an ISO 15118 EV (AC parameters, 2.0.1 schema).

    2.0.1 has no V2X fields; an AC EV states its energy request, current range and voltage. What an
    ISO 15118-20 EV also knows (battery size, state of charge, its discharge limit and the minimum
    SoC it keeps) goes in ``customData`` under ``V2X_VENDOR_ID``, the convention the gateway reads.
    """
    s = evse.session
    assert s is not None
    phases = evse.spec.phases
    max_current = max(1, round(s.arrival.max_charge_kw * 1000.0 / (phases * VOLTAGE_V)))
    needs: dict[str, Any] = {
        "requestedEnergyTransfer": "AC_three_phase" if phases == 3 else "AC_single_phase",
        "acChargingParameters": {
            "energyAmount": max(0, round(energy_kwh * 1000.0)),
            "evMinCurrent": 6,  # IEC 61851 minimum
            "evMaxCurrent": max_current,
            "evMaxVoltage": 400 if phases == 3 else 230,
        },
    }
    if departure is not None:
        needs["departureTime"] = to_rfc3339(departure)
    battery = s.battery
    v2x: dict[str, Any] = {
        "vendorId": V2X_VENDOR_ID,
        "evEnergyCapacity": round(s.arrival.capacity_kwh * 1000.0),
        "stateOfCharge": round(100.0 * battery.soc),
        "evMinSoC": round(100.0 * s.arrival.reserve_soc),
    }
    if s.arrival.bidirectional and evse.spec.bidirectional:
        v2x["evMaxDischargePower"] = round(s.arrival.max_discharge_kw * 1000.0)
    needs["customData"] = v2x
    return needs


def transaction_event(
    evse: EvseState,
    *,
    event_type: str,
    trigger: str,
    when: datetime,
    offline: bool,
    context: str | None = "Sample.Periodic",
    with_token: bool = False,
    stopped_reason: str | None = None,
) -> dict[str, Any]:
    """A TransactionEvent request (E01-E07); the seqNo is drawn from the session here."""
    s = evse.session
    assert s is not None
    info: dict[str, Any] = {
        "transactionId": s.transaction.id,
        "chargingState": s.charging_state,
        "timeSpentCharging": int(s.time_charging_s),
    }
    if stopped_reason is not None:
        info["stoppedReason"] = stopped_reason
    msg: dict[str, Any] = {
        "eventType": event_type,
        "timestamp": to_rfc3339(when),
        "triggerReason": trigger,
        "seqNo": s.next_seq(),
        "transactionInfo": info,
    }
    if offline:
        msg["offline"] = True  # E04: generated while the link was down
    if event_type == "Started":
        msg["evse"] = {"id": evse.spec.evse_id, "connectorId": 1}
    if with_token:
        msg["idToken"] = id_token(s.arrival.id_token, s.arrival.iso15118)
    if context is not None:
        msg["meterValue"] = [meter_value(evse, when, context)]
    return msg
