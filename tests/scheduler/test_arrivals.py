"""The expected-arrivals model: counts per watched hour, and the aggregate slots it plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from gateway.scheduler.arrivals import ARRIVAL_OFFSET, DWELL_GROUPS, EXPECTED_SLOTS, PLANNED_SHARE, ArrivalModel
from gateway.scheduler.problem import make_grid

MONDAY = datetime(2026, 7, 6, tzinfo=UTC)


def watch_day(m: ArrivalModel, day: datetime, arrivals: list[tuple[datetime, float, float]]) -> None:
    """Look at the site every 5 minutes of ``day``; each EV (arrival, dwell h, energy) is seen
    plugged in at every look while it stays and reported complete when it leaves."""
    present: dict[int, tuple[datetime, datetime, float]] = {}
    gone: set[int] = set()
    for step in range(24 * 12):
        now = day + timedelta(minutes=5 * step)
        for i, (arr, dwell_h, kwh) in enumerate(arrivals):
            if arr <= now and i not in present and i not in gone:
                present[i] = (arr, arr + timedelta(hours=dwell_h), kwh)
        for i, (arr, dep, kwh) in list(present.items()):
            if dep <= now:
                m.observe("w", arr, dep, kwh, 11.0)
                present.pop(i)
                gone.add(i)
        m.watch("w", now)
        for i, (arr, _, _) in present.items():
            m.arrived("w", (day, i), arr)


def test_counts_arrivals_per_watched_day_and_keeps_weekends_apart() -> None:
    m = ArrivalModel()
    for d in range(5):  # Monday to Friday: two EVs at 8 h, none on Friday
        day = MONDAY + timedelta(days=d)
        evs = [] if d == 4 else [(day + timedelta(hours=8, minutes=10 * j), 6.0 + j, 10.0 * (j + 1))
                                 for j in range(2)]
        watch_day(m, day, evs)
    exp = m.expected("w", MONDAY + timedelta(days=7, hours=8))
    assert exp is not None
    assert exp.per_day == pytest.approx(8 / 5)
    assert sum(g.share * g.energy_kwh for g in exp.groups) == pytest.approx(15.0)
    # Split by length of stay into thirds (3, 3, 2 of the 8): the 6-h stays took 10 kWh, the 7-h ones 20.
    assert [(g.dwell_h, g.energy_kwh) for g in exp.groups] == [(6.0, 10.0), (7.0, pytest.approx(50 / 3)),
                                                               (7.0, 20.0)]
    assert [g.share for g in exp.groups] == pytest.approx([3 / 8, 3 / 8, 2 / 8])
    assert m.expected("w", MONDAY + timedelta(days=5, hours=8)) is None  # a Saturday
    assert m.expected("w", MONDAY + timedelta(days=7, hours=9)) is None  # nobody comes at 9


def test_a_day_in_progress_does_not_dilute_the_count() -> None:
    """On the second morning, before 8 h, the first day's two 8 o'clock EVs are all the site has
    seen of that hour: two per day, not one (today's 8 h is not watched yet)."""
    m = ArrivalModel()
    watch_day(m, MONDAY, [(MONDAY + timedelta(hours=8, minutes=5 * j), 8.0, 10.0) for j in range(2)])
    tuesday = MONDAY + timedelta(days=1)
    for step in range(7 * 12):  # Tuesday until 7 h
        m.watch("w", tuesday + timedelta(minutes=5 * step))
    exp = m.expected("w", tuesday + timedelta(hours=8))
    assert exp is not None and exp.per_day == pytest.approx(2.0)


def test_an_hour_watched_only_in_part_is_not_counted() -> None:
    m = ArrivalModel()
    start = MONDAY + timedelta(hours=8, minutes=30)  # the gateway starts at 8:30
    arr = MONDAY + timedelta(hours=8, minutes=40)
    for step in range(12):
        now = start + timedelta(minutes=5 * step)
        m.watch("w", now)
        if now >= arr:
            m.arrived("w", "TX-1", arr)
    m.observe("w", arr, arr + timedelta(hours=1), 10.0, 11.0)
    assert m.expected("w", MONDAY + timedelta(days=1, hours=8)) is None
    # History loaded at start-up marks the whole hours it covers.
    m.watched("w", MONDAY + timedelta(hours=7, minutes=59), MONDAY + timedelta(hours=9))
    exp = m.expected("w", MONDAY + timedelta(days=1, hours=8))
    assert exp is not None and exp.per_day == pytest.approx(1.0)


def test_expected_slots_keep_room_from_the_second_step_on() -> None:
    m = ArrivalModel()
    for d in range(3):  # each day at 9 h: three short visits (1 h, 6 kWh) and three long stays (6 h, 20 kWh)
        day = MONDAY + timedelta(days=d)
        watch_day(m, day, [(day + timedelta(hours=9, minutes=2 * j), 1.0 if j < 3 else 6.0, 6.0 if j < 3 else 20.0)
                           for j in range(6)])
    now = MONDAY + timedelta(days=3, hours=9, minutes=20)
    grid = make_grid(now, 24 * 3600.0)
    slots = m.slots("w", grid, now)
    assert len(slots) == EXPECTED_SLOTS * DWELL_GROUPS
    nine = slots[:DWELL_GROUPS]  # the rest of this hour: 40 of its 60 minutes still to come
    # Room for the planned share of them (not all: see PLANNED_SHARE).
    assert 0.5 <= PLANNED_SHARE <= 1.0
    assert sum(s.target_energy_kwh for s in nine) == pytest.approx(PLANNED_SHARE * (3 * 6.0 + 3 * 20.0) * 40 / 60)
    assert sum(s.max_charge_kw for s in nine) == pytest.approx(PLANNED_SHARE * 6 * 11.0 * 40 / 60)
    assert all(not s.connected[0] and s.connected.any() for s in nine)
    # The short visits (9:30-10:30) are gone an hour after they come, the long stays (to 15:30)
    # charge for six; from 10:00 on the steps are hourly and a step half spent here counts.
    stays = [float(grid.durations_s[s.connected].sum()) / 3600.0 for s in nine]
    assert stays[0] == pytest.approx(1.5) and stays[-1] == pytest.approx(6.5)
    assert not any(s.connected.any() or s.target_energy_kwh for s in slots[DWELL_GROUPS:])
    assert np.all([s.max_discharge_kw == 0.0 for s in slots])
    # Their needs are battery-side energy, drawn at the efficiency the site's EVs are planned with.
    assert all(s.eff_charge == 0.85 for s in m.slots("w", grid, now, eff_charge=0.85))


def test_a_session_seen_for_days_counts_once_and_old_history_is_forgotten() -> None:
    from gateway.scheduler.arrivals import KEEP_DAYS

    m = ArrivalModel()
    arr = MONDAY + timedelta(hours=8, minutes=10)
    for step in range(5 * 24 * 12):  # five days, one look every 5 minutes, the same EV plugged in
        now = MONDAY + timedelta(minutes=5 * step)
        m.watch("w", now)
        if now >= arr:
            m.arrived("w", "TX-LONG", arr)
    m.observe("w", arr, arr + timedelta(days=5), 50.0, 11.0)
    exp = m.expected("w", MONDAY + timedelta(days=7, hours=8))
    assert exp is not None and exp.per_day == pytest.approx(1 / 5)  # one arrival in five watched weekdays
    assert m.remembered() == 2  # one plug-in counted, one session remembered
    later = MONDAY + timedelta(days=KEEP_DAYS + 7)
    m.watch("w", later)
    assert m.remembered() == 0
    assert m.expected("w", later.replace(hour=8)) is None


def test_hours_are_the_sites_own_in_a_zone_half_an_hour_off_utc() -> None:
    """India (+5:30): EVs counted in the 8 o'clock hour are planned in that hour (from its middle,
    08:30 local, 03:00 UTC), not in the UTC hour that starts at 08:30 local."""
    m = ArrivalModel(tz="Asia/Kolkata")
    for d in range(3):
        day = MONDAY + timedelta(days=d)  # 05:30 local
        eight = day + timedelta(hours=2, minutes=30)  # 08:00 local
        watch_day(m, day, [(eight + timedelta(minutes=5 * j), 4.0, 10.0) for j in range(3)])
    now = MONDAY + timedelta(days=3, hours=1, minutes=40)  # Thursday 07:10 local
    grid = make_grid(now, 24 * 3600.0)
    slots = m.slots("w", grid, now)
    starts = grid.starts()
    # The hour counted (local 8) is the second block planned (local 7 is the first); its EVs are
    # due 08:00 local plus the arrival offset, present in the steps they spend at least half of.
    eights = [s for s in slots[DWELL_GROUPS:2 * DWELL_GROUPS] if s.connected.any()]
    assert eights and not any(s.connected.any() for s in slots[:DWELL_GROUPS])
    first = min(starts[int(np.flatnonzero(s.connected)[0])] for s in eights)
    due = MONDAY + timedelta(days=3, hours=2, minutes=30) + ARRIVAL_OFFSET
    assert abs(first - due) <= timedelta(minutes=5)  # in UTC hours: half an hour later


def test_the_hour_repeated_when_the_clocks_go_back_counts_as_two_watched_hours() -> None:
    # Europe/Berlin, 27 Oct 2024: 02:00-03:00 local comes twice. One EV an hour, every real hour:
    # each local hour of that Sunday expects one, the repeated one included (it counted two).
    m = ArrivalModel(tz="Europe/Berlin")
    start = datetime(2024, 10, 26, 22, 0, tzinfo=UTC)  # 00:00 local on the Sunday
    for h in range(25):  # 25 real hours in that local day
        arr = start + timedelta(hours=h, minutes=10)
        m.arrived("w", f"S{h}", arr)
        m.observe("w", arr, arr + timedelta(minutes=30), 5.0, 11.0)
    m.watched("w", start, start + timedelta(hours=25))
    for local_hour_utc in (start + timedelta(hours=1), start + timedelta(hours=2), start + timedelta(hours=3),
                           start + timedelta(hours=4)):
        exp = m.expected("w", local_hour_utc)
        assert exp is not None and exp.per_day == pytest.approx(1.0), local_hour_utc


def test_visits_shorter_than_half_an_hour_keep_room_in_the_step_they_come_in() -> None:
    m = ArrivalModel()
    for d in range(3):  # each day at 9 h: three 15-minute visits of 3 kWh
        day = MONDAY + timedelta(days=d)
        watch_day(m, day, [(day + timedelta(hours=9, minutes=2 * j), 0.25, 3.0) for j in range(3)])
    now = MONDAY + timedelta(days=3, hours=7, minutes=20)
    grid = make_grid(now, 24 * 3600.0)
    slots = [s for s in m.slots("w", grid, now) if s.target_energy_kwh > 0]
    # Under half of any hourly step: they were in none, so no plan kept room for them.
    assert slots and all(int(s.connected.sum()) == 1 for s in slots)
    assert sum(s.target_energy_kwh for s in slots) == pytest.approx(PLANNED_SHARE * 3 * 3.0)
