"""OCPP-J framing, sans I/O: text in, decisions and text out.

Nothing here touches a socket, a clock or a task. ``connection.py`` feeds received frames to
:func:`parse_frame` and sends what the builders return; every protocol rule is therefore a plain
unit test.

Malformed input never raises. :func:`parse_frame` returns one of

    Call | CallResult | CallError     a well-formed OCPP-J message (Part 4 §4.2)
    FrameError                        answer the peer with this CALLERROR, keep the socket open
    Ignored                           a malformed *response*: log it, never answer it (answering
                                      a response would start an error ping-pong between peers)

How each malformed kind maps to a CALLERROR code (OCPP-J 2.0.1 Part 4 §4.2.3, Table "Valid
Error Codes"); the message id is "-1" whenever it cannot be read (§4.2.3):

    not UTF-8 / not JSON / nesting too deep   RpcFrameworkError   "-1"
      for the JSON parser
    binary WebSocket frame                    RpcFrameworkError   "-1"  (OCPP-J uses text frames, §3.3)
    not a JSON array, or an empty array       RpcFrameworkError   "-1"
    MessageTypeId not 2, 3 or 4               MessageTypeNotSupported  id if readable, else "-1"
    message id missing, not a string, empty   RpcFrameworkError   "-1"
    message id longer than 36 characters      RpcFrameworkError   "-1"  (§4.1.4: max 36 chars)
    message id with a lone surrogate          RpcFrameworkError   "-1"  (not text: unreadable, and
                                                                        no reply could carry it)
    CALL with wrong number of elements        RpcFrameworkError   id
    CALL action not a non-empty string, or    RpcFrameworkError   id
      with a lone surrogate
    CALL payload not a JSON object            FormatViolation     id
    CALL payload with a lone surrogate        FormatViolation     id   (a "\ud800" escape: valid
                                                                        JSON, not Unicode text)
    CALL payload nested deeper than
      MAX_PAYLOAD_DEPTH                       FormatViolation     id
    CALL payload with a number no float
      can hold (1e400)                        PropertyConstraintViolation  id

A CALLRESULT/CALLERROR carrying such content cannot be used either: it becomes a local
:class:`CallError` (FormatViolation / PropertyConstraintViolation) for the waiting caller, so the
caller fails at once instead of waiting for its timeout; nothing is sent to the station.
Everything we send is UTF-8-encodable text: the builders refuse anything else with ValueError
before it reaches the socket (an unencodable ``send`` would abort the WebSocket).
    action unknown to the schema set          NotImplemented      id   (decided by the caller)
    payload violates the action's schema      see ``validation.py``

The "one outstanding CALL per direction" rule (Part 4 §4.1.1) lives in :class:`OutgoingCalls`
(ours to the station) and :class:`IncomingCalls` (the station's to us).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import deque
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Final

CALL: Final = 2
CALLRESULT: Final = 3
CALLERROR: Final = 4

MAX_MESSAGE_ID_LENGTH: Final = 36  # Part 4 §4.1.4
MAX_ERROR_DESCRIPTION_LENGTH: Final = 255  # Part 4 §4.2.3, errorDescription
UNREADABLE_ID: Final = "-1"  # Part 4 §4.2.3
# The deepest 2.0.1 PDU nests about 10 levels; vendor data (customData, DataTransfer.data) gets
# generous room. A hard bound well below Python's recursion limit keeps every later walk (schema
# validation, the jsonb encoder on the way to Postgres) from overflowing the stack: without it a
# payload ~960 levels deep passed the parser and then crashed the handler.
MAX_PAYLOAD_DEPTH: Final = 64
# A lone UTF-16 surrogate can only enter through a JSON "\uD800"-style escape (websockets
# decodes the frame as strict UTF-8); this cheap test on the raw text decides whether the
# decoded frame needs a scan.
_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")



def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity are Python extensions, not JSON


class _NumberOutOfRange(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # JSON allows 1e400; a double cannot hold it, and an infinity can be neither stored in
        # jsonb nor sent back as JSON.
        raise _NumberOutOfRange(text)
    return value


class _Huge:
    """Stands in for an out-of-range number while the frame is re-read for its id."""

    def __repr__(self) -> str:
        return "<number out of range>"


_HUGE: Final = _Huge()
# Python refuses to convert an integer of more than 4,300 digits (a ValueError json reports as
# invalid JSON): such a number is valid JSON out of range, like 1e400, and answered as one.
INT_DIGITS_MAX = 4000


def _bounded_int(text: str) -> int:
    if len(text) > INT_DIGITS_MAX:
        raise _NumberOutOfRange(text[:20] + "...")
    return int(text)


_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                           parse_int=_bounded_int).decode
_decode_marking_huge = json.JSONDecoder(
    parse_constant=_reject_constant,
    parse_float=lambda t: v if math.isfinite(v := float(t)) else _HUGE,
    parse_int=lambda t: int(t) if len(t) <= INT_DIGITS_MAX else _HUGE,
).decode
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _encode(value: Any) -> str:
    """JSON text that is also sendable: a lone surrogate (which UTF-8 cannot encode) raises
    ValueError here, not UnicodeEncodeError inside websockets, which would abort the socket."""
    text = _encode_json(value)
    if not text.isascii() and _SURROGATE.search(text) is not None:
        raise ValueError("a string is not valid Unicode text (lone surrogate)")
    return text


def has_lone_surrogate(value: Any) -> bool:
    """True when any string in ``value`` (dict keys included) holds a lone surrogate."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v) is not None:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _has_huge(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if v is _HUGE:
            return True
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _deeper_than(value: Any, limit: int) -> bool:
    """True when ``value`` nests more than ``limit`` containers (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                return True
            children = v.values() if isinstance(v, dict) else v
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


@dataclass(frozen=True, slots=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    message_id: str
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FrameError:
    """A malformed frame that must be answered with this CALLERROR."""

    message_id: str
    code: str
    description: str

    def reply(self) -> str:
        return build_call_error(self.message_id, self.code, self.description)


@dataclass(frozen=True, slots=True)
class Ignored:
    """A malformed CALLRESULT/CALLERROR: dropped, never answered."""

    reason: str
    message_id: str | None = None


Parsed = Call | CallResult | CallError | FrameError | Ignored


def _readable_id(value: Any) -> str | None:
    if type(value) is str and 0 < len(value) <= MAX_MESSAGE_ID_LENGTH and _SURROGATE.search(value) is None:
        return value
    return None


def parse_binary() -> FrameError:
    """OCPP-J runs over text frames only (Part 4 §3.3); a binary frame is not a valid RPC."""
    return FrameError(UNREADABLE_ID, "RpcFrameworkError", "binary frames are not supported")


def parse_frame(text: str | bytes) -> Parsed:
    """Decode one WebSocket text frame. Never raises."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return FrameError(UNREADABLE_ID, "RpcFrameworkError", "frame is not UTF-8")
    huge = False
    try:
        msg = _decode(text)
    except _NumberOutOfRange:
        # Valid JSON, but a number out of range: read it again with a marker in the number's
        # place, so the CALLERROR can carry the message id (Part 4 §4.2.3).
        huge = True
        try:
            msg = _decode_marking_huge(text)
        except (ValueError, RecursionError):
            return FrameError(UNREADABLE_ID, "RpcFrameworkError", "frame is not valid JSON")
    except ValueError:
        return FrameError(UNREADABLE_ID, "RpcFrameworkError", "frame is not valid JSON")
    except RecursionError:
        return FrameError(UNREADABLE_ID, "RpcFrameworkError", "frame nesting is too deep")
    parsed = _parse_message(msg)
    if isinstance(parsed, FrameError | Ignored):
        return parsed
    if huge and _has_huge(msg):
        return _bad_content(parsed, "PropertyConstraintViolation", "a number is out of range")
    content = parsed.payload if isinstance(parsed, Call | CallResult) else parsed.details
    if _deeper_than(content, MAX_PAYLOAD_DEPTH):
        return _bad_content(parsed, "FormatViolation", f"payload nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text) is not None and has_lone_surrogate(msg):
        return _bad_content(parsed, "FormatViolation", "payload text is not valid Unicode (lone surrogate)")
    return parsed


def _bad_content(parsed: Call | CallResult | CallError, code: str, description: str) -> FrameError | CallError:
    """A well-framed message whose content cannot be used (see the module docstring)."""
    if isinstance(parsed, Call):
        return FrameError(parsed.message_id, code, description)
    return CallError(parsed.message_id, code, f"unusable reply: {description}", {})


def _parse_message(msg: Any) -> Parsed:
    if type(msg) is not list or not msg:
        return FrameError(UNREADABLE_ID, "RpcFrameworkError", "frame is not a non-empty JSON array")

    type_id = msg[0]
    message_id = _readable_id(msg[1]) if len(msg) > 1 else None
    if type(type_id) is not int or type_id not in (CALL, CALLRESULT, CALLERROR):
        return FrameError(message_id or UNREADABLE_ID, "MessageTypeNotSupported",
                          f"MessageTypeId {type_id!r} is not supported")
    if type_id == CALL:
        return _parse_call(msg, message_id)
    if message_id is None:
        return Ignored("response without a readable message id")
    if type_id == CALLRESULT:
        if len(msg) != 3 or type(msg[2]) is not dict:
            return Ignored("CALLRESULT must be [3, id, {payload}]", message_id)
        return CallResult(message_id, msg[2])
    if len(msg) != 5 or type(msg[2]) is not str or type(msg[3]) is not str or type(msg[4]) is not dict:
        return Ignored("CALLERROR must be [4, id, code, description, {details}]", message_id)
    return CallError(message_id, msg[2], msg[3], msg[4])


def _parse_call(msg: list[Any], message_id: str | None) -> Call | FrameError:
    if message_id is None:
        return FrameError(UNREADABLE_ID, "RpcFrameworkError", "message id missing, not a string or too long")
    if len(msg) != 4:
        return FrameError(message_id, "RpcFrameworkError", "CALL must be [2, id, action, {payload}]")
    action = msg[2]
    if type(action) is not str or not action or _SURROGATE.search(action) is not None:
        return FrameError(message_id, "RpcFrameworkError", "CALL action must be a non-empty string")
    payload = msg[3]
    if type(payload) is not dict:
        return FrameError(message_id, "FormatViolation", "CALL payload must be a JSON object")
    return Call(message_id, action, payload)


def build_call(message_id: str, action: str, payload: dict[str, Any]) -> str:
    return _encode([CALL, message_id, action, payload])


def build_call_result(message_id: str, payload: dict[str, Any]) -> str:
    return _encode([CALLRESULT, message_id, payload])


def build_call_error(
    message_id: str, code: str, description: str = "", details: dict[str, Any] | None = None
) -> str:
    return _encode([CALLERROR, message_id, code, description[:MAX_ERROR_DESCRIPTION_LENGTH], details or {}])


class MessageIds:
    """Message ids for our CALLs: unique per process run, short, and cheap (no uuid per CALL)."""

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = prefix if prefix is not None else os.urandom(6).hex() + "-"
        self._counter = count(1)

    def new(self) -> str:
        message_id = f"{self._prefix}{next(self._counter)}"
        assert len(message_id) <= MAX_MESSAGE_ID_LENGTH
        return message_id


@dataclass(slots=True)
class OutgoingCall:
    message_id: str
    action: str
    payload: dict[str, Any]
    sent: bool = False  # its frame went out (set by the connection)

    def frame(self) -> str:
        return build_call(self.message_id, self.action, self.payload)


@dataclass(slots=True)
class OutgoingCalls:
    """Our CALLs to one station: at most one in flight, the rest queued in order (Part 4 §4.1.1).

    The owner calls :meth:`submit`, then sends whatever :meth:`next_to_send` returns, each time
    the slot may have freed (after :meth:`submit`, :meth:`reply_for`, :meth:`abandon`).
    """

    ids: MessageIds = field(default_factory=MessageIds)
    in_flight: OutgoingCall | None = None
    queue: deque[OutgoingCall] = field(default_factory=deque)

    def submit(self, action: str, payload: dict[str, Any]) -> OutgoingCall:
        call = OutgoingCall(self.ids.new(), action, payload)
        self.queue.append(call)
        return call

    def next_to_send(self) -> OutgoingCall | None:
        """Move the head of the queue into the free slot and return it, or None."""
        if self.in_flight is not None or not self.queue:
            return None
        self.in_flight = self.queue.popleft()
        return self.in_flight

    def reply_for(self, message_id: str) -> OutgoingCall | None:
        """The in-flight call this CALLRESULT/CALLERROR answers (slot freed), or None if stray."""
        call = self.in_flight
        if call is None or call.message_id != message_id:
            return None
        self.in_flight = None
        return call

    def abandon(self, call: OutgoingCall) -> None:
        """Forget a call whose caller gave up (timeout, cancel); a late reply is then stray."""
        if self.in_flight is call:
            self.in_flight = None
        else:
            try:
                self.queue.remove(call)
            except ValueError:
                pass

    def close(self) -> list[OutgoingCall]:
        """Every call still pending (in flight first, then queued in order); empties the state."""
        pending = ([self.in_flight] if self.in_flight is not None else []) + list(self.queue)
        self.in_flight = None
        self.queue.clear()
        return pending


# The station's CALLs waiting for their turn, at most (see IncomingCalls.full).
INCOMING_QUEUED_MAX = 32


@dataclass(slots=True)
class IncomingCalls:
    """The station's CALLs to us, answered one after another in arrival order.

    A well-behaved station sends one at a time (Part 4 §4.1.1); one that pipelines still gets
    its CALLs handled in order. A CALL whose message id equals one still queued or being
    handled is a retransmission: it is dropped, and the single reply under that id answers it,
    so a handler never runs twice for one message.
    """

    queue: deque[Call] = field(default_factory=deque)
    active: set[str] = field(default_factory=set)

    @property
    def full(self) -> bool:
        """As many CALLs wait as a station that pipelines a little could mean
        (``INCOMING_QUEUED_MAX``): one sending more without waiting for answers would grow the
        gateway without bound while a handler waits (on the database, D5)."""
        return len(self.queue) >= INCOMING_QUEUED_MAX

    def receive(self, call: Call) -> bool:
        """Queue ``call``; False when it duplicates a message id still in progress."""
        if call.message_id in self.active:
            return False
        self.active.add(call.message_id)
        self.queue.append(call)
        return True

    def next(self) -> Call | None:
        return self.queue.popleft() if self.queue else None

    def done(self, call: Call) -> None:
        self.active.discard(call.message_id)

    def clear(self) -> None:
        self.queue.clear()
        self.active.clear()
