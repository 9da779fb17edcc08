"""Building blocks shared by every router's request and response models, and the bounds of site
inputs shared with the TOML site file (:mod:`gateway.config`): a limit or price refused over
REST is refused in the file too.

Times: inputs must be RFC 3339 strings with an offset and are turned into UTC; outputs are UTC
with ``Z``. Numbers must be finite. Strings that reach Postgres refuse NUL and control
characters (Postgres text cannot hold NUL, and an id with a newline in it is a mistake, not data).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    StringConstraints,
)

from gateway.clock import to_rfc3339

T = TypeVar("T")

# Postgres keeps timestamptz to year 294276 but Python stops at 9999: keep well inside both so
# a conversion to UTC can never overflow.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a time must carry a UTC offset (RFC 3339, e.g. 2026-01-01T08:00:00Z)")
    try:
        out = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range") from None
    if not _EARLIEST <= out <= _LATEST:
        raise ValueError("time out of range (1970..9000)")
    return out


# The shape of an RFC 3339 date-time; the offset is checked after parsing (_aware_utc), with a
# message that says what is missing.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")


def _rfc3339_text(value: Any) -> Any:
    # Lax datetime parsing would also take a number (or a string of digits) as Unix time: the
    # API's times are RFC 3339 strings, so anything else is refused before it is parsed.
    if isinstance(value, datetime):
        return value  # built in Python, not parsed from a request
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ValueError("a time must be an RFC 3339 string with a UTC offset, e.g. 2026-01-01T08:00:00Z")
    return value


# Accepted on input: an RFC 3339 string with an offset; held as aware UTC.
AwareDateTime = Annotated[datetime, BeforeValidator(_rfc3339_text), Strict(False), AfterValidator(_aware_utc)]
# Written on output: RFC 3339 UTC with ``Z``.
UtcDateTime = Annotated[datetime, PlainSerializer(to_rfc3339, return_type=str, when_used="json")]

_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
_NO_SLASH = r"^[^\x00-\x1f\x7f/]+$"


def _not_a_dot_segment(v: str) -> str:
    if v in (".", ".."):
        raise ValueError("an id cannot be '.' or '..'")
    return v


# An id that names a resource in a path (GET/DELETE /grid-events/{id}): no slash (a client's
# %2F is decoded before routing, so the resource could be made and never reached) and not "."
# or ".." (clients and proxies fold those path segments away).
Ident = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_SLASH),
                  AfterValidator(_not_a_dot_segment)]
StationId = Annotated[str, StringConstraints(min_length=1, max_length=48, pattern=r"^[^\x00-\x1f\x7f:/]+$"),
                      AfterValidator(_not_a_dot_segment)]
TransactionId = Annotated[str, StringConstraints(min_length=1, max_length=36, pattern=_NO_SLASH)]
# OCPP makes a transactionId unique at its station only (stations may count 1, 2, 3...).
TX_ID_SCOPE = ("A transactionId is unique at its station only: without station_id, the sessions of that id "
               "at every station (each row says its station)")
Label = Annotated[str, StringConstraints(max_length=80, pattern=r"^[^\x00-\x1f\x7f]*$")]

# --- site inputs (REST and the TOML site file) ------------------------------------------------
SITE_POWER_MAX_KW = 100_000.0  # 100 MW: far above any site this gateway plans
PRICE_MAX_PER_KWH = 100.0  # currency units; far above any real price, below nonsense
DEMAND_CHARGE_MAX_PER_KW = 10_000.0
SITE_NAME_MAX_LENGTH = 80  # the billing and building tables key on it (VARCHAR(80))

SitePowerLimitKw = Annotated[float, Field(ge=0, le=SITE_POWER_MAX_KW, allow_inf_nan=False)]
PricePerKwh = Annotated[float, Field(ge=-PRICE_MAX_PER_KWH, le=PRICE_MAX_PER_KWH, allow_inf_nan=False)]
DemandChargePerKw = Annotated[float, Field(ge=0, le=DEMAND_CHARGE_MAX_PER_KW, allow_inf_nan=False)]
HourOfDay = Annotated[float, Field(ge=0, le=24, allow_inf_nan=False)]
SiteName = Annotated[str, StringConstraints(min_length=1, max_length=SITE_NAME_MAX_LENGTH, pattern=_PRINTABLE)]
TOU_PERIODS_MAX = 96


def check_tou_window(start_hour: float, end_hour: float) -> None:
    """A window whose end is its start is empty (one ending before its start wraps midnight), and
    so is 24 to 0."""
    if start_hour == end_hour or (start_hour == 24 and end_hour == 0):
        raise ValueError("the window is empty (it ends where it starts)")


def _tou_spans(start_hour: float, end_hour: float) -> list[tuple[float, float]]:
    return [(start_hour, end_hour)] if start_hour < end_hour else [(start_hour, 24.0), (0.0, end_hour)]


def check_tou_periods(windows: list[tuple[float, float]]) -> None:
    """Every window non-empty and no two overlapping: where two overlapped, only the first listed
    would ever apply, which is a mistake to point out, not to follow silently."""
    for i, (start, end) in enumerate(windows):
        try:
            check_tou_window(start, end)
        except ValueError as exc:
            raise ValueError(f"periods[{i}]: {exc}") from None
    for i, a in enumerate(windows):
        for j in range(i + 1, len(windows)):
            b = windows[j]
            if any(a0 < b1 and b0 < a1 for a0, a1 in _tou_spans(*a) for b0, b1 in _tou_spans(*b)):
                raise ValueError(f"periods[{i}] and periods[{j}] overlap")


Limit = Annotated[int, Field(ge=1, le=1000, description="Page size")]
Offset = Annotated[int, Field(ge=0, le=1_000_000_000, description="Items to skip")]


class Model(BaseModel):
    """Request bodies refuse unknown fields and take JSON types as they are (``false`` is not 0,
    ``"3"`` is not 3): a typo should be a 422, not silently read as something else. Times and
    enums are parsed from their JSON strings (``strict=False`` on those fields). ``NaN`` and
    ``Infinity`` (which Python's JSON reader accepts) are refused as not finite, before any
    bound is checked, so the message says what is wrong."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
