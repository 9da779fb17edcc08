"""Validation of what energy systems send over MQTT. Pure: bytes in, a typed value or an error
out; the bridge applies the value through :class:`gateway.bus.site_inputs.SiteInputs`."""

from __future__ import annotations

import itertools
import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from gateway.api.schemas import PRICE_MAX_PER_KWH, SITE_POWER_MAX_KW, AwareDateTime, Ident
from gateway.bus.site_inputs import check_forecast_starts, check_grid_event
from gateway.domain import GridEventKind

PAYLOAD_BYTES_MAX = 1_000_000
POWER_MAX_KW = SITE_POWER_MAX_KW  # the bounds REST has (gateway/api/schemas.py)


class Invalid(ValueError):
    """A message that is not what the topic's contract says; the text names the first problem."""


_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")


def _rfc3339_text(value: Any) -> Any:
    # Lax datetime parsing reads a number, or a string of digits, as Unix time, guessing seconds
    # or milliseconds from its size: the contract says RFC 3339 strings, and a time is too
    # important to the stale-reading rule to rest on a guess.
    if not isinstance(value, str) or _NUMBER.fullmatch(value.strip()):
        raise ValueError("a time must be an RFC 3339 string with an offset (e.g. 2026-01-01T08:00:00Z)")
    return value


Time = Annotated[AwareDateTime, BeforeValidator(_rfc3339_text)]


class _In(BaseModel):
    # strict: JSON types as they are, as REST takes them ("42" is not a number, "yes" and 1 are
    # not booleans; an int is still a float). Times and enums parse from their strings
    # (strict=False on those types/fields).
    model_config = ConfigDict(extra="forbid", strict=True)


class PricePoint(_In):
    start: Time
    end: Time
    import_price_per_kwh: float = Field(ge=-PRICE_MAX_PER_KWH, le=PRICE_MAX_PER_KWH)
    export_price_per_kwh: float = Field(ge=-PRICE_MAX_PER_KWH, le=PRICE_MAX_PER_KWH)

    @model_validator(mode="after")
    def _ordered(self) -> PricePoint:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Prices(_In):
    prices: list[PricePoint] = Field(max_length=10_000)

    @model_validator(mode="after")
    def _apart(self) -> Prices:
        # Overlapping windows would leave the price in the overlap to the order inside the
        # message (the last window found wins): refused, as REST refuses overlapping tariff
        # periods and forecast points at one start.
        ordered = sorted(self.prices, key=lambda p: p.start)
        for before, after in itertools.pairwise(ordered):
            if after.start < before.end:
                raise ValueError(f"price windows overlap: one from {before.start.isoformat()} to "
                                 f"{before.end.isoformat()}, one from {after.start.isoformat()}")
        return self


class LoadPoint(_In):
    start: Time
    power_kw: float = Field(ge=-POWER_MAX_KW, le=POWER_MAX_KW)


class BuildingLoad(_In):
    power_kw: float = Field(ge=-POWER_MAX_KW, le=POWER_MAX_KW)
    ts: Time | None = None
    forecast: list[LoadPoint] | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def _distinct(self) -> BuildingLoad:
        if self.forecast is not None:
            check_forecast_starts([p.start for p in self.forecast])  # REST's rule, shared
        return self


class GridEventMsg(_In):
    id: Ident
    cancel: bool = False
    start: Time | None = None
    end: Time | None = None
    kind: GridEventKind | None = Field(default=None, strict=False)
    payment_per_kwh: float = Field(default=0.0, ge=0, le=PRICE_MAX_PER_KWH)
    cap_kw: float | None = Field(default=None, ge=0, le=POWER_MAX_KW)

    @model_validator(mode="after")
    def _complete(self) -> GridEventMsg:
        if self.cancel:
            return self
        if self.start is None or self.end is None or self.kind is None:
            raise ValueError("start, end and kind are required (or cancel: true)")
        check_grid_event(self.start, self.end, self.kind, self.cap_kw)  # REST's rules, shared
        return self


MODELS: dict[str, type[_In]] = {"prices": Prices, "building_load": BuildingLoad, "grid_events": GridEventMsg}


def parse(name: str, payload: bytes | bytearray | str | Any) -> _In:
    if not isinstance(payload, bytes | bytearray | str):
        raise Invalid("payload is not text")
    if len(payload) > PAYLOAD_BYTES_MAX:
        raise Invalid(f"payload over {PAYLOAD_BYTES_MAX} bytes")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"not JSON: {exc}") from None
    except RecursionError:
        # json's decoder recurses per [ or {: 100 kB of "[" exhausts the stack. Only a hostile or
        # broken sender nests that deep, and no topic's contract nests more than three levels.
        raise Invalid("not JSON this bridge reads: nested too deeply") from None
    try:
        return MODELS[name].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise Invalid(f"{where}: {first.get('msg', 'invalid')}") from None
