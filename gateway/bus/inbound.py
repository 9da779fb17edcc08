"""Validation of what energy systems send over MQTT. Pure: bytes in, a typed value or an error
out; the bridge applies the value through :class:`gateway.bus.site_inputs.SiteInputs`."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.api.schemas import AwareDateTime, Ident
from gateway.domain import GridEventKind

PAYLOAD_BYTES_MAX = 1_000_000
POWER_MAX_KW = 100_000.0
PRICE_MAX_PER_KWH = 100.0


class Invalid(ValueError):
    """A message that is not what the topic's contract says; the text names the first problem."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PricePoint(_In):
    start: AwareDateTime
    end: AwareDateTime
    import_price_per_kwh: float = Field(ge=-PRICE_MAX_PER_KWH, le=PRICE_MAX_PER_KWH)
    export_price_per_kwh: float = Field(ge=-PRICE_MAX_PER_KWH, le=PRICE_MAX_PER_KWH)

    @model_validator(mode="after")
    def _ordered(self) -> PricePoint:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Prices(_In):
    prices: list[PricePoint] = Field(max_length=10_000)


class LoadPoint(_In):
    start: AwareDateTime
    power_kw: float = Field(ge=-POWER_MAX_KW, le=POWER_MAX_KW)


class BuildingLoad(_In):
    power_kw: float = Field(ge=-POWER_MAX_KW, le=POWER_MAX_KW)
    ts: AwareDateTime | None = None
    forecast: list[LoadPoint] | None = Field(default=None, max_length=10_000)


class GridEventMsg(_In):
    id: Ident
    cancel: bool = False
    start: AwareDateTime | None = None
    end: AwareDateTime | None = None
    kind: GridEventKind | None = None
    payment_per_kwh: float = Field(default=0.0, ge=0, le=PRICE_MAX_PER_KWH)
    cap_kw: float | None = Field(default=None, ge=0, le=POWER_MAX_KW)

    @model_validator(mode="after")
    def _complete(self) -> GridEventMsg:
        if self.cancel:
            return self
        if self.start is None or self.end is None or self.kind is None:
            raise ValueError("start, end and kind are required (or cancel: true)")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.kind == GridEventKind.IMPORT_CAP and self.cap_kw is None:
            raise ValueError("an import_cap event needs cap_kw")
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
    try:
        return MODELS[name].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise Invalid(f"{where}: {first.get('msg', 'invalid')}") from None
