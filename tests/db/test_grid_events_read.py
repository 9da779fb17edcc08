"""The grid events a starting gateway takes back: those not cancelled that have not ended."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.db.engine import make_engine, sessionmaker
from gateway.db.planning import PlanningRepository
from gateway.domain import GridEvent, GridEventKind

T = datetime(2026, 7, 1, 8, tzinfo=UTC)


async def test_only_events_still_to_end_and_not_cancelled_are_taken_back(clean_db: str) -> None:
    engine = make_engine(clean_db, pool_size=2)
    try:
        repo = PlanningRepository(sessionmaker(engine))
        h = timedelta(hours=1)
        for ev, cancel in ((GridEvent("ended", T - 3 * h, T - h, GridEventKind.EXPORT_REQUEST, 1.0), False),
                           (GridEvent("ends-now", T - h, T, GridEventKind.IMPORT_CAP, cap_kw=50.0), False),
                           (GridEvent("cancelled", T + h, T + 2 * h, GridEventKind.EXPORT_REQUEST, 1.0), True),
                           (GridEvent("running", T - h, T + h, GridEventKind.IMPORT_CAP, cap_kw=40.0), False),
                           (GridEvent("coming", T + h, T + 2 * h, GridEventKind.EXPORT_REQUEST, 2.0), False)):
            await repo.upsert_grid_event(ev, "test", T - 4 * h)
            if cancel:
                await repo.cancel_grid_event(ev.id, T - 4 * h)
        active = await repo.active_grid_events(T)
        assert [e.id for e in active] == ["running", "coming"]
        assert active[0].cap_kw == 40.0 and active[1].payment_per_kwh == 2.0
    finally:
        await engine.dispose()
