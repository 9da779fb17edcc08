"""Random OCPP 2.0.1 CALL payloads from the JSON schemas: valid ones, and ones broken in one known way.

A misbehaving station for robustness tests and ``bench/ocpp_fuzz.py``: every station-to-CSMS
action's request schema (the ``ocpp`` package's bundled set) drives a seeded generator, so a
failure is reproducible from its seed. Valid payloads stay inside OCPP's own primitive types
(Part 2: 32-bit integers, printable strings without NUL; EVSE ids from 1), which the schemas
do not state.
A mutation breaks exactly one rule, so the CALLERROR it must draw is known in advance
(OCPP-J Part 4 §4.2.3, as ``gateway.ocpp.validation`` maps schema keywords to codes).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

from gateway.domain import EVSE_ID_MAX

SCHEMAS = "ocpp.v201.schemas"
MAX_DEPTH = 6  # below this, optional properties are left out (some schemas nest deeply)
MAX_ITEMS = 3  # arrays without a smaller maxItems get at most this many items beyond minItems
INT32 = (-(2**31), 2**31 - 1)
TEXT = string.ascii_letters + string.digits + " -_.:/@#äöüßéЖ中"
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)

# The CALLERROR each mutation must draw.
MUTATION_CODES = {
    "missing_required": "OccurrenceConstraintViolation",
    "wrong_type": "TypeConstraintViolation",
    "not_in_enum": "PropertyConstraintViolation",
    "too_long": "PropertyConstraintViolation",
    "unknown_property": "FormatViolation",
    "int_over_32_bits": "PropertyConstraintViolation",
}

Path = tuple[str | int, ...]


def wrong_answer(action: str, kind: str, reply: list[Any]) -> str | None:
    """What is wrong with the CSMS's ``reply`` to a frame of ``kind`` ("valid" or a mutation),
    or None: a valid frame wants a CALLRESULT its response schema accepts, a broken one the
    CALLERROR of its fault."""
    from gateway.ocpp.errors import OcppError
    from gateway.ocpp.validation import V201

    if kind != "valid":
        ok = reply[0] == 4 and reply[2] == MUTATION_CODES[kind]
        return None if ok else f"{action} ({kind}) answered {reply[:4]}"
    if reply[0] != 3:
        return f"{action} (valid) answered {reply[2:4]}"
    try:
        V201.check(action, reply[2], request=False)
    except OcppError as exc:
        return f"{action}: the answer fails its schema: {exc}"
    return None


@cache
def request_schema(action: str) -> dict[str, Any]:
    text = resources.files(SCHEMAS).joinpath(f"{action}Request.json").read_text(encoding="utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


class FrameFuzzer:
    """Payloads for one action's request schema, drawn from ``rng``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # --- valid ----------------------------------------------------------------------------
    def valid(self, action: str) -> dict[str, Any]:
        root = request_schema(action)
        out = self._value(root, root, 0)
        assert isinstance(out, dict)
        return out

    def _resolve(self, node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref is None:
            return node
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return self._resolve(target, root)

    def _value(self, node: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
        node = self._resolve(node, root)
        rng = self.rng
        kind = node.get("type")
        if "enum" in node:
            return rng.choice(node["enum"])
        if kind == "object":
            out: dict[str, Any] = {}
            required = set(node.get("required", ()))
            for name, sub in node.get("properties", {}).items():
                if name in required or (depth < MAX_DEPTH and rng.random() < 0.5):
                    out[name] = self._value(sub, root, depth + 1)
            # An EVSE is numbered 1.. on its station (gateway.domain.EVSE_ID_MAX at most), a rule
            # of OCPP's (EVSEType.id > 0) and of the gateway's that the schemas do not state.
            if isinstance(out.get("evseId"), int):
                out["evseId"] = rng.randint(1, EVSE_ID_MAX)
            if isinstance(out.get("evse"), dict) and "id" in out["evse"]:
                out["evse"]["id"] = rng.randint(1, EVSE_ID_MAX)
            return out
        if kind == "array":
            lo = int(node.get("minItems", 0))
            hi = min(int(node.get("maxItems", lo + MAX_ITEMS)), lo + MAX_ITEMS)
            return [self._value(node["items"], root, depth + 1) for _ in range(rng.randint(lo, hi))]
        if kind == "string":
            if node.get("format") == "date-time":
                when = EPOCH + timedelta(seconds=rng.randint(0, 10 * 365 * 86400), milliseconds=rng.randint(0, 999))
                return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            n = rng.randint(0, min(int(node.get("maxLength", 40)), 40))
            return "".join(rng.choice(TEXT) for _ in range(n))
        if kind == "integer":
            lo, hi = int(node.get("minimum", INT32[0])), int(node.get("maximum", INT32[1]))
            pick = rng.random()
            if pick < 0.8:  # mostly the small numbers real stations send
                return rng.randint(max(lo, 0), max(min(hi, 1000), max(lo, 0)))
            return rng.choice([lo, hi]) if pick < 0.9 else rng.randint(lo, hi)
        if kind == "number":
            lo_f, hi_f = float(node.get("minimum", -1e6)), float(node.get("maximum", 1e6))
            return rng.uniform(lo_f, hi_f)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind is None:  # any JSON (DataTransfer's data)
            return rng.choice([None, rng.randint(0, 100), "text", {"k": [1, "two", {"three": 3.0}]}])
        raise ValueError(f"no generator for schema node {node!r}")

    # --- mutated --------------------------------------------------------------------------
    def mutated(self, action: str) -> tuple[dict[str, Any], str]:
        """A valid payload broken in one way; (payload, mutation name). Mutations the payload
        offers no place for (an action whose schema has no enum, say) are skipped."""
        root = request_schema(action)
        for _ in range(50):
            payload = self.valid(action)
            kind = self.rng.choice(sorted(MUTATION_CODES))
            spots = self._spots(kind, payload, root, root, ())
            if spots:
                spots[self.rng.randrange(len(spots))](payload)
                return payload, kind
        raise ValueError(f"{action}: no place to break")

    def _spots(self, kind: str, value: Any, node: dict[str, Any], root: dict[str, Any],
               path: Path) -> list[Callable[[dict[str, Any]], None]]:
        """Every way to apply ``kind`` to ``value`` (which ``node`` describes) or inside it."""
        node = self._resolve(node, root)
        out: list[Callable[[dict[str, Any]], None]] = []
        t = node.get("type")
        if t == "object" and isinstance(value, dict):
            props = node.get("properties", {})
            if kind == "missing_required":
                out += [_delete((*path, k)) for k in node.get("required", ()) if k in value]
            if kind == "unknown_property" and node.get("additionalProperties") is False:
                out.append(_set((*path, "notInTheSchema"), 1))
            for k, v in value.items():
                if k in props:
                    out += self._spots(kind, v, props[k], root, (*path, k))
        elif t == "array" and isinstance(value, list):
            for i, v in enumerate(value):
                out += self._spots(kind, v, node["items"], root, (*path, i))
        if path:
            if kind == "wrong_type" and t is not None:
                out.append(_set(path, [] if t in ("string", "integer", "number", "boolean", "object") else "text"))
            elif kind == "not_in_enum" and "enum" in node:
                out.append(_set(path, "NotAnEnumValue"))
            elif kind == "too_long" and t == "string" and "maxLength" in node and "enum" not in node:
                out.append(_set(path, "x" * (int(node["maxLength"]) + 1)))
            elif kind == "int_over_32_bits" and t == "integer" and "maximum" not in node:
                out.append(_set(path, 2**40))
        return out


def _walk(payload: dict[str, Any], path: Path) -> Any:
    node: Any = payload
    for key in path[:-1]:
        node = node[key]
    return node


def _set(path: Path, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(payload: dict[str, Any]) -> None:
        _walk(payload, path)[path[-1]] = value
    return apply


def _delete(path: Path) -> Callable[[dict[str, Any]], None]:
    def apply(payload: dict[str, Any]) -> None:
        del _walk(payload, path)[path[-1]]
    return apply
