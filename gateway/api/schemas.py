"""Building blocks shared by every router's request and response models.

Times: inputs must carry an offset (RFC 3339) and are turned into UTC; outputs are UTC with
``Z``. Strings that reach Postgres refuse NUL and control characters (Postgres text cannot
hold NUL, and an id with a newline in it is a mistake, not data).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, Strict, StringConstraints

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


# Accepted on input: RFC 3339 with an offset; held as aware UTC.
AwareDateTime = Annotated[datetime, Strict(False), AfterValidator(_aware_utc)]
# Written on output: RFC 3339 UTC with ``Z``.
UtcDateTime = Annotated[datetime, PlainSerializer(to_rfc3339, return_type=str, when_used="json")]

_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
Ident = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
_NO_SLASH = r"^[^\x00-\x1f\x7f/]+$"
StationId = Annotated[str, StringConstraints(min_length=1, max_length=48, pattern=r"^[^\x00-\x1f\x7f:/]+$")]
TransactionId = Annotated[str, StringConstraints(min_length=1, max_length=36, pattern=_NO_SLASH)]
Label = Annotated[str, StringConstraints(max_length=80, pattern=r"^[^\x00-\x1f\x7f]*$")]

Limit = Annotated[int, Field(ge=1, le=1000, description="Page size")]
Offset = Annotated[int, Field(ge=0, le=1_000_000_000, description="Items to skip")]


class Model(BaseModel):
    """Request bodies refuse unknown fields and take JSON types as they are (``false`` is not 0,
    ``"3"`` is not 3): a typo should be a 422, not silently read as something else. Times and
    enums are parsed from their JSON strings (``strict=False`` on those fields)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
