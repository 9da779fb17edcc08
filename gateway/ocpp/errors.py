"""OCPP errors, in one hierarchy.

    GatewayOcppError
    ├── OcppError                    answered to the peer as a CALLERROR (OCPP-J, Part 4 §4.3)
    │   ├── FormatViolation          payload not the action's PDU (extra field), not an object,
    │   │                            lone surrogate, nested too deep
    │   ├── ProtocolError            never raised by this CSMS (kept so a peer's CALLERROR with it
    │   │                            maps to a class): a missing required field is
    │   │                            OccurrenceConstraintViolation, a wrong-arity frame
    │   │                            RpcFrameworkError (validation.py, protocol.py)
    │   ├── PropertyConstraintViolation  bad value: enum, length, range, 32-bit integer, dateTime
    │   ├── OccurrenceConstraintViolation  required field missing, too few / too many items
    │   ├── TypeConstraintViolation
    │   ├── NotImplementedOcpp       unknown action ("NotImplemented" on the wire)
    │   ├── NotSupported             known action we do not support
    │   ├── MessageTypeNotSupported  unknown message type number
    │   ├── RpcFrameworkError        unreadable frame / id problems
    │   ├── SecurityError
    │   ├── GenericError
    │   └── InternalError            only for genuine bugs, never for bad input
    ├── NoReply                      a handler's answer has nowhere to go (its connection closed):
    │                                nothing is sent, the station replays on its next connection
    └── CallFailed                   raised to *our* caller when a CALL we sent did not succeed
        ├── StationOffline           the station is not connected (fails fast, no queueing)
        ├── CallTimeout              no reply within the call timeout
        ├── ConnectionReplaced       the connection closed (e.g. a newer one took over) mid-call
        └── CallErrorReceived        the station answered with a CALLERROR (code, description)
"""

from __future__ import annotations

from typing import Any


class GatewayOcppError(Exception):
    pass


class NoReply(GatewayOcppError):
    """Raised by a handler that stopped because its station's connection closed."""


class OcppError(GatewayOcppError):
    code: str = "GenericError"

    def __init__(self, description: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(description or self.code)
        self.description = description
        self.details: dict[str, Any] = details or {}


class FormatViolation(OcppError):
    code = "FormatViolation"


class ProtocolError(OcppError):
    code = "ProtocolError"


class PropertyConstraintViolation(OcppError):
    code = "PropertyConstraintViolation"


class OccurrenceConstraintViolation(OcppError):
    code = "OccurrenceConstraintViolation"


class TypeConstraintViolation(OcppError):
    code = "TypeConstraintViolation"


class NotImplementedOcpp(OcppError):
    code = "NotImplemented"


class NotSupported(OcppError):
    code = "NotSupported"


class MessageTypeNotSupported(OcppError):
    code = "MessageTypeNotSupported"


class RpcFrameworkError(OcppError):
    code = "RpcFrameworkError"


class SecurityError(OcppError):
    code = "SecurityError"


class GenericError(OcppError):
    code = "GenericError"


class InternalError(OcppError):
    code = "InternalError"


ERROR_CODES: dict[str, type[OcppError]] = {
    cls.code: cls
    for cls in (
        FormatViolation, ProtocolError, PropertyConstraintViolation, OccurrenceConstraintViolation,
        TypeConstraintViolation, NotImplementedOcpp, NotSupported, MessageTypeNotSupported,
        RpcFrameworkError, SecurityError, GenericError, InternalError,
    )
}


class CallFailed(GatewayOcppError):
    """A CALL the gateway sent to a station did not produce a CALLRESULT."""

    def __init__(self, station_id: str, action: str, message: str) -> None:
        super().__init__(f"{action} to {station_id}: {message}")
        self.station_id = station_id
        self.action = action


class StationOffline(CallFailed):
    def __init__(self, station_id: str, action: str) -> None:
        super().__init__(station_id, action, "station is not connected")


class CallTimeout(CallFailed):
    def __init__(self, station_id: str, action: str, timeout_s: float) -> None:
        super().__init__(station_id, action, f"no reply within {timeout_s:g} s")
        self.timeout_s = timeout_s


class CallNotSent(CallTimeout):
    """The CALL waited its turn (one in flight at a time, OCPP-J Part 4 §4.1.1) for the whole
    timeout and never went out: the station was busy with earlier ones, not silent."""

    def __init__(self, station_id: str, action: str, timeout_s: float) -> None:
        CallFailed.__init__(self, station_id, action,
                            f"not sent within {timeout_s:g} s: the station's earlier calls were still pending")
        self.timeout_s = timeout_s


class ConnectionReplaced(CallFailed):
    def __init__(self, station_id: str, action: str, reason: str = "connection closed") -> None:
        super().__init__(station_id, action, reason)


class CallErrorReceived(CallFailed):
    def __init__(
        self, station_id: str, action: str, code: str, description: str, details: dict[str, Any] | None
    ) -> None:
        super().__init__(station_id, action, f"CALLERROR {code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}
