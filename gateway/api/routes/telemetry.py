"""Meter values by station or session over a time range, raw or averaged into buckets."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from gateway.api.deps import GatewayDep, Operator, QueriesDep
from gateway.api.errors import Unprocessable, responses
from gateway.api.schemas import (
    TX_ID_SCOPE,
    AwareDateTime,
    Limit,
    Offset,
    Page,
    StationId,
    TransactionId,
    UtcDateTime,
)
from gateway.domain import EVSE_ID_MAX

router = APIRouter(prefix="/telemetry", tags=["telemetry"], responses=responses(401, 403, 422))

DEFAULT_WINDOW_H = 24
# The longest window one request reads: a month of one station's samples (tens of thousands of
# rows at 1/min per measurand). Unbounded, start=1970 made the database scan the whole history
# (and count it) for one page.
WINDOW_MAX_DAYS = 31
# The most buckets a window may split into: date_bin groups the whole window before the page is
# cut, so 31 days of 1-s buckets would be millions of groups for a page of 1,000.
BUCKETS_MAX = 100_000
MEASURAND_PATTERN = r"^[A-Za-z0-9.]{1,50}$"


class MeterValueOut(BaseModel):
    ts: UtcDateTime
    station_id: str
    evse_id: int
    transaction_id: str | None
    measurand: str
    phase: str | None
    context: str | None
    value: float
    unit: str | None
    location: str | None = Field(description="Where the meter is (OCPP LocationEnumType); null: Outlet, the "
                                             "EVSE's side (the default, said or not). A station's Inlet "
                                             "reading counts all its EVSEs")


class BucketOut(BaseModel):
    start: UtcDateTime
    station_id: str
    evse_id: int
    measurand: str
    phase: str | None
    unit: str | None
    location: str | None
    avg: float
    min: float
    max: float
    count: int


class Filters:
    """The query every telemetry read shares: who (station or session) and when."""

    def __init__(
        self,
        station_id: StationId | None = Query(default=None),
        transaction_id: TransactionId | None = Query(default=None, description=TX_ID_SCOPE),
        evse_id: int | None = Query(default=None, ge=0, le=EVSE_ID_MAX),
        measurand: str | None = Query(default=None, pattern=MEASURAND_PATTERN,
                                      description="e.g. Power.Active.Import"),
        start: AwareDateTime | None = Query(default=None, description=f"Default: end - {DEFAULT_WINDOW_H} h; "
                                                                     f"at most {WINDOW_MAX_DAYS} days before end"),
        end: AwareDateTime | None = Query(default=None, description="Default: now (exclusive)"),
    ) -> None:
        self.station_id, self.transaction_id, self.evse_id, self.measurand = (
            station_id, transaction_id, evse_id, measurand)
        self._start, self._end = start, end

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        if self.station_id is None and self.transaction_id is None:
            raise Unprocessable("give station_id or transaction_id", {"field": "station_id"})
        end = self._end or now
        start = self._start or end - timedelta(hours=DEFAULT_WINDOW_H)
        if end <= start:
            raise Unprocessable("end must be after start", {"field": "end"})
        if end - start > timedelta(days=WINDOW_MAX_DAYS):
            # Only a start given can make it so long (one left out is 24 h before the end).
            raise Unprocessable(f"the window from start to end is longer than {WINDOW_MAX_DAYS} days: "
                                "read a longer span in several requests",
                                {"field": "start", "max_days": WINDOW_MAX_DAYS})
        return start, end


FiltersDep = Annotated[Filters, Depends()]


@router.get("/meter-values")
async def meter_values(gw: GatewayDep, q: QueriesDep, _: Operator, f: FiltersDep,
                       limit: Limit = 1000, offset: Offset = 0) -> Page[MeterValueOut]:
    """Raw samples, oldest first."""
    start, end = f.window(gw.clock.now())
    rows, total = await q.meter_values(station_id=f.station_id, transaction_id=f.transaction_id,
                                       evse_id=f.evse_id, measurand=f.measurand, start=start, end=end,
                                       limit=limit, offset=offset)
    items = [MeterValueOut(ts=r.ts, station_id=r.station_id, evse_id=r.evse_id,
                           transaction_id=r.transaction_id, measurand=r.measurand, phase=r.phase,
                           context=r.context, value=r.value, unit=r.unit, location=r.location)
             for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/meter-values/buckets")
async def meter_value_buckets(
    gw: GatewayDep, q: QueriesDep, _: Operator, f: FiltersDep,
    bucket_s: int = Query(ge=1, le=7 * 86400, description="Bucket width in seconds (Postgres date_bin), "
                                                           f"aligned on start; at most {BUCKETS_MAX} buckets "
                                                           "in the window"),
    limit: Limit = 1000, offset: Offset = 0,
) -> Page[BucketOut]:
    """Samples averaged per bucket, per station, EVSE, measurand, phase and meter location."""
    start, end = f.window(gw.clock.now())
    buckets = math.ceil((end - start).total_seconds() / bucket_s)
    if buckets > BUCKETS_MAX:
        raise Unprocessable(f"{buckets} buckets of {bucket_s} s: at most {BUCKETS_MAX} (a wider bucket_s or a "
                            "shorter window)", {"field": "bucket_s", "max_buckets": BUCKETS_MAX})
    rows, total = await q.meter_buckets(station_id=f.station_id, transaction_id=f.transaction_id,
                                        evse_id=f.evse_id, measurand=f.measurand, start=start, end=end,
                                        bucket_s=bucket_s, limit=limit, offset=offset)
    items = [BucketOut(start=b.start, station_id=b.station_id, evse_id=b.evse_id, measurand=b.measurand,
                       phase=b.phase, unit=b.unit, location=b.location, avg=b.avg, min=b.min, max=b.max,
                       count=b.count)
             for b in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)
