"""The bucketed meter query pages by OFFSET: its ORDER BY must cover every key it groups by."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.db.engine import make_engine, sessionmaker
from gateway.db.queries import Queries
from tests.gateway.test_handlers import fetch

T = datetime(2026, 7, 1, 8, tzinfo=UTC)


async def test_buckets_differing_only_by_unit_are_paged_each_once_in_order(clean_db: str) -> None:
    """Two groups in one bucket, the same but for the unit: ordered by everything else only, the
    order between them was whatever the plan gave, so page by page one could come twice and the
    other never."""
    # Inserted in the opposite of the expected order (NULL first, then "A" < "V" in any collation).
    for unit in ("V", "A", None):
        await fetch(clean_db, "INSERT INTO meter_values (ts, station_id, evse_id, measurand, value, unit) "
                              "VALUES ($1, 'CS-1', 1, 'Voltage', 230.0, $2)", T + timedelta(seconds=5), unit)
    engine = make_engine(clean_db, pool_size=2)
    try:
        q = Queries(sessionmaker(engine))
        units = []
        for offset in range(3):
            page, total = await q.meter_buckets(
                station_id="CS-1", transaction_id=None, evse_id=None, measurand=None, start=T,
                end=T + timedelta(minutes=1), bucket_s=60, limit=1, offset=offset)
            assert total == 3 and len(page) == 1 and page[0].start == T
            units.append(page[0].unit)
        assert units == [None, "A", "V"]
    finally:
        await engine.dispose()
