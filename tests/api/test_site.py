"""Site limits, tariff and grid events round-trip through REST into the planner's inputs, and
telemetry reads (raw and downsampled with date_bin)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx

from gateway import events as ev
from gateway.bus.site_inputs import PriceOverride, SiteInputs
from gateway.clock import to_rfc3339
from gateway.domain import GridEventKind, Tariff, TouPeriod
from tests.api.conftest import OPERATOR, eventually, plug_in
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness


async def test_limits_tariff_building_load_round_trip(
    gateway_server: GatewayHarness, api: httpx.AsyncClient
) -> None:
    gw = gateway_server.gw
    assert gw is not None
    sub = gw.bus.subscribe(ev.SiteInputsChanged)
    put = await api.put("/api/v1/site/limits", headers=OPERATOR, json={"import_kw": 120.0, "export_kw": 30.0})
    assert put.status_code == 200 and put.json() == {"import_kw": 120.0, "export_kw": 30.0}
    assert (await api.get("/api/v1/site/limits", headers=OPERATOR)).json() == put.json()
    assert gw.state.limits.import_kw == 120.0
    assert (await sub.get()).what == "limits"  # type: ignore[attr-defined]
    assert (
        await api.put("/api/v1/site/limits", headers=OPERATOR, json={"import_kw": -1, "export_kw": 0})
    ).status_code == 422

    tariff = {
        "periods": [
            {"start_hour": 0, "end_hour": 12, "import_price": 0.1, "export_price": 0.05},
            {"start_hour": 12, "end_hour": 24, "import_price": 0.3, "export_price": 0.1},
        ],
        "demand_charge_per_kw": 9.5,
    }
    t = await api.put("/api/v1/tariff", headers=OPERATOR, json=tariff)
    assert t.status_code == 200, t.text
    got = (await api.get("/api/v1/tariff", headers=OPERATOR)).json()
    assert got["periods"][1]["import_price"] == 0.3 and got["demand_charge_per_kw"] == 9.5
    assert got["timezone"] == "UTC" == gw.state.tariff.timezone  # the site's (its configuration)
    assert gw.state.tariff.demand_charge_per_kw == 9.5 and len(gw.state.tariff.periods) == 2
    assert (await sub.get()).what == "tariff"  # type: ignore[attr-defined]
    empty = await api.put(
        "/api/v1/tariff",
        headers=OPERATOR,
        json={
            **tariff,
            "periods": [{"start_hour": 5, "end_hour": 5, "import_price": 0.1, "export_price": 0.0}],
        },
    )
    assert empty.status_code == 422

    now = gw.clock.now()
    load = await api.put(
        "/api/v1/site/building-load",
        headers=OPERATOR,
        json={
            "power_kw": 42.5,
            "forecast": [{"start": to_rfc3339(now + timedelta(hours=1)), "power_kw": 60.0}],
        },
    )
    assert load.status_code == 200, load.text
    site = load.json()
    assert site["building_load_kw"] == 42.5 and site["site_power_kw"] == 42.5
    assert site["building_load_forecast"][0]["power_kw"] == 60.0
    assert site["building_load_forecast"][0]["start"].endswith("Z")
    assert (await sub.get()).what == "building_load"  # type: ignore[attr-defined]

    # Stored: a restarted gateway plans with them (the lead wires restore() into start-up).
    from gateway.bus.site_inputs import restore

    gw.state.limits = gw.settings.site.limits()
    await restore(gw)
    assert gw.state.limits.import_kw == 120.0 and gw.state.tariff.demand_charge_per_kw == 9.5
    assert gw.state.building_load_kw == 42.5
    sub.close()


async def test_a_building_load_reading_carries_its_time_and_an_older_one_is_refused(
    gateway_server: GatewayHarness, api: httpx.AsyncClient
) -> None:
    gw = gateway_server.gw
    assert gw is not None
    now = gw.clock.now()
    url = "/api/v1/site/building-load"
    newer = await api.put(url, headers=OPERATOR, json={"power_kw": 80.0, "ts": to_rfc3339(now)})
    assert newer.status_code == 200, newer.text
    # A reading taken before the one applied (a retry that lost a race, a replayed MQTT message)
    # must not undo it: 409, and the newer value stays.
    older = await api.put(url, headers=OPERATOR,
                          json={"power_kw": 20.0, "ts": to_rfc3339(now - timedelta(minutes=1))})
    assert older.status_code == 409 and older.json()["error"]["code"] == "stale", older.text
    assert gw.state.building_load_kw == 80.0
    ahead = await api.put(url, headers=OPERATOR, json={"power_kw": 20.0, "ts": to_rfc3339(now + timedelta(hours=1))})
    assert ahead.status_code == 422 and "ahead" in ahead.json()["error"]["message"], ahead.text
    # Without ts a reading is taken now, as before.
    assert (await api.put(url, headers=OPERATOR, json={"power_kw": 30.0})).status_code == 200
    assert gw.state.building_load_kw == 30.0


async def test_grid_events_create_list_cancel(gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    gw = gateway_server.gw
    assert gw is not None
    sub = gw.bus.subscribe(ev.SiteInputsChanged)
    now = gw.clock.now()
    body = {
        "start": to_rfc3339(now + timedelta(hours=1)),
        "end": to_rfc3339(now + timedelta(hours=2)),
        "kind": "import_cap",
        "cap_kw": 50.0,
    }
    created = await api.post("/api/v1/grid-events", headers=OPERATOR, json=body)
    assert created.status_code == 201, created.text
    event_id = created.json()["id"]
    assert created.json()["source"] == "rest" and created.json()["cancelled_at"] is None
    assert gw.state.grid_events[event_id].kind == GridEventKind.IMPORT_CAP
    assert gw.state.grid_events[event_id].cap_kw == 50.0
    assert (await sub.get()).what == "grid_events"  # type: ignore[attr-defined]

    named = await api.post(
        "/api/v1/grid-events",
        headers=OPERATOR,
        json={**body, "id": "dr-7", "kind": "export_request", "cap_kw": None, "payment_per_kwh": 0.5},
    )
    assert named.status_code == 201 and named.json()["id"] == "dr-7"
    listed = await api.get("/api/v1/grid-events?limit=1", headers=OPERATOR)
    assert listed.json()["total"] == 2 and len(listed.json()["items"]) == 1

    bad = await api.post("/api/v1/grid-events", headers=OPERATOR, json={**body, "cap_kw": None})
    assert bad.status_code == 422 and "cap_kw" in bad.json()["error"]["message"]
    backwards = await api.post(
        "/api/v1/grid-events", headers=OPERATOR, json={**body, "end": body["start"], "start": body["end"]}
    )
    assert backwards.status_code == 422

    cancelled = await api.delete(f"/api/v1/grid-events/{event_id}", headers=OPERATOR)
    assert cancelled.status_code == 200 and cancelled.json()["cancelled_at"].endswith("Z")
    assert event_id not in gw.state.grid_events
    assert (await api.get(f"/api/v1/grid-events/{event_id}", headers=OPERATOR)).status_code == 404
    kept = await api.get(f"/api/v1/grid-events/{event_id}?include_cancelled=true", headers=OPERATOR)
    assert kept.status_code == 200
    assert (await api.delete(f"/api/v1/grid-events/{event_id}", headers=OPERATOR)).status_code == 404
    open_only = await api.get("/api/v1/grid-events", headers=OPERATOR)
    assert [e["id"] for e in open_only.json()["items"]] == ["dr-7"]
    sub.close()


async def test_telemetry_raw_and_downsampled(gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    gw = gateway_server.gw
    assert gw is not None
    st = await plug_in(gateway_server, "CS-T1", "tx-t1", "TOKEN-T1")
    # Six samples a minute apart, from 9 minutes ago.
    origin = gw.clock.now().replace(microsecond=0) - timedelta(seconds=600)
    for i in range(1, 7):
        await st.tx_event(
            "Updated",
            "tx-t1",
            energy_wh=1000.0 * i,
            power_w=1000.0 * i,
            at=origin + timedelta(seconds=60 * i),
        )
    start, end = to_rfc3339(origin), to_rfc3339(origin + timedelta(seconds=400))
    # The window leaves out the 7 kW sample the Started event carried a moment ago.
    query = f"station_id=CS-T1&measurand=Power.Active.Import&start={start}&end={end}"

    async def stored() -> bool:
        r = await api.get(f"/api/v1/telemetry/meter-values?{query}", headers=OPERATOR)
        return bool(r.json()["total"] == 6)

    await eventually(stored, "the meter values to be written")
    raw = (await api.get(f"/api/v1/telemetry/meter-values?{query}&limit=2&offset=1", headers=OPERATOR)).json()
    assert [v["value"] for v in raw["items"]] == [2000.0, 3000.0] and raw["items"][0]["ts"].endswith("Z")
    by_tx = await api.get(
        "/api/v1/telemetry/meter-values?transaction_id=tx-t1&measurand=Power.Active.Import", headers=OPERATOR
    )
    assert by_tx.json()["total"] == 7  # with the 7 kW sample of the Started event

    buckets = await api.get(f"/api/v1/telemetry/meter-values/buckets?{query}&bucket_s=120", headers=OPERATOR)
    assert buckets.status_code == 200, buckets.text
    items = buckets.json()["items"]
    # Samples at +60..+360 s from start, buckets of 120 s aligned on start: [60], [120,180], [240,300], [360].
    assert [b["count"] for b in items] == [1, 2, 2, 1]
    assert [b["avg"] for b in items] == [1000.0, 2500.0, 4500.0, 6000.0]
    assert items[1]["min"] == 2000.0 and items[1]["max"] == 3000.0 and items[0]["start"] == start
    no_filter = await api.get("/api/v1/telemetry/meter-values", headers=OPERATOR)
    assert no_filter.status_code == 422
    await st.ws.close()


async def test_a_tariff_and_a_price_feed_stored_at_once_both_survive_a_restart(gateway_factory: Any) -> None:
    """One tariff row holds the tariff and the price overrides: a REST tariff and an MQTT price
    feed stored at the same moment must not each write the other's half as it was."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    rest, mqtt = SiteInputs(h.gw), SiteInputs(h.gw)  # each caller holds its own, as live
    now = h.gw.clock.now().replace(microsecond=0)  # stored to the millisecond
    tariff = Tariff(periods=(TouPeriod(0, 24, 0.33, 0.05),), demand_charge_per_kw=7.0)
    feed = [PriceOverride(now + timedelta(hours=1), now + timedelta(hours=2), 0.5, 0.1)]
    await asyncio.gather(rest.set_tariff(tariff, "rest"), mqtt.set_price_overrides(feed, "mqtt"))
    await h.restart()
    gw = h.gw
    assert gw is not None
    assert [p.import_price for p in gw.state.tariff.periods] == [0.33]
    assert [(a, b, i, x) for a, b, i, x in gw.state.price_overrides] == [
        (feed[0].start, feed[0].end, 0.5, 0.1)]


async def test_a_price_feed_does_not_freeze_the_site_files_tariff(gateway_factory: Any) -> None:
    """A price forecast's row carries a copy of the tariff then in force. Taken at a restart as a
    tariff someone set, it froze the site file's: after one MQTT price message, an edited file's
    tariff and demand charge were ignored for good. A tariff set over REST still outlasts it."""
    from gateway.config import SiteConfig, TouPeriodConfig

    h: GatewayHarness = await gateway_factory(site=SiteConfig(demand_charge_per_kw=15.0))
    assert h.gw is not None
    now = h.gw.clock.now().replace(microsecond=0)
    feed = [PriceOverride(now + timedelta(hours=1), now + timedelta(hours=2), 0.5, 0.1)]
    await SiteInputs(h.gw).set_price_overrides(feed, "mqtt")
    edited = SiteConfig(demand_charge_per_kw=40.0,
                        tou=[TouPeriodConfig(start_hour=0, end_hour=24, import_price=0.5, export_price=0.0)])
    h.settings = h.settings.model_copy(update={"site": edited})
    await h.restart()
    assert h.gw is not None
    assert h.gw.state.tariff.demand_charge_per_kw == 40.0
    assert [p.import_price for p in h.gw.state.tariff.periods] == [0.5]
    assert [(a, b) for a, b, _, _ in h.gw.state.price_overrides] == [(feed[0].start, feed[0].end)]
    # Set over REST, then a feed again: the REST tariff is the one kept.
    await SiteInputs(h.gw).set_tariff(Tariff(periods=(TouPeriod(0, 24, 0.33, 0.05),), demand_charge_per_kw=7.0),
                                      "rest")
    await SiteInputs(h.gw).set_price_overrides(feed, "mqtt")
    await h.restart()
    assert h.gw is not None
    assert h.gw.state.tariff.demand_charge_per_kw == 7.0


async def test_ids_windows_and_spans_that_could_not_work_are_refused(
        gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    gw = gateway_server.gw
    assert gw is not None
    now = gw.clock.now()
    body = {"start": to_rfc3339(now + timedelta(hours=1)), "end": to_rfc3339(now + timedelta(hours=2)),
            "kind": "import_cap", "cap_kw": 50.0}
    # An id that could be created and never fetched or cancelled by its path.
    for bad in ("feed/42", ".", ".."):
        r = await api.post("/api/v1/grid-events", headers=OPERATOR, json={**body, "id": bad})
        assert r.status_code == 422, (bad, r.text)
    # At most 31 days, not 31 days and 23 hours.
    long = {**body, "end": to_rfc3339(now + timedelta(hours=1, days=31, minutes=1))}
    r = await api.post("/api/v1/grid-events", headers=OPERATOR, json=long)
    assert r.status_code == 422 and "31 days" in r.text
    # A tariff window from 24 to 0 is empty; two windows sharing hours would leave one unused.
    tariff = {"demand_charge_per_kw": 10.0, "periods": [
        {"start_hour": 24, "end_hour": 0, "import_price": 0.3, "export_price": 0.1}]}
    r = await api.put("/api/v1/tariff", headers=OPERATOR, json=tariff)
    assert r.status_code == 422 and "empty" in r.text
    tariff["periods"] = [{"start_hour": 22, "end_hour": 6, "import_price": 0.1, "export_price": 0.05},
                         {"start_hour": 5, "end_hour": 9, "import_price": 0.3, "export_price": 0.1}]
    r = await api.put("/api/v1/tariff", headers=OPERATOR, json=tariff)
    assert r.status_code == 422 and "periods[0] and periods[1] overlap" in r.text
    tariff["periods"][1]["start_hour"] = 6
    assert (await api.put("/api/v1/tariff", headers=OPERATOR, json=tariff)).status_code == 200


async def test_the_database_away_is_a_503_to_retry_not_a_500(
        gateway_factory: Any, proxy_and_url: tuple[Any, str]) -> None:
    proxy, url = proxy_and_url
    h = await gateway_factory(database_url=url)
    gw = h.gw
    assert gw is not None
    before = gw.state.limits.import_kw
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        await proxy.cut()
        r = await api.put("/api/v1/site/limits", headers=OPERATOR, json={"import_kw": 10.0, "export_kw": 10.0})
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
        assert r.headers["Retry-After"] == "5"
        assert gw.state.limits.import_kw == before  # nothing changed
        # A building-load reading is in force live at once; only storing it failed, and the
        # answer says so (not a plain "unavailable" for a value the plan already uses).
        r = await api.put("/api/v1/site/building-load", headers=OPERATOR, json={"power_kw": 321.0})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_stored", r.text
        assert "applied" in r.json()["error"]["message"] and r.headers["Retry-After"] == "5"
        assert gw.state.building_load_kw == 321.0
        await proxy.restore()


async def test_a_failure_of_something_else_than_the_database_stays_a_500(
        gateway_server: GatewayHarness, api: httpx.AsyncClient, monkeypatch: Any) -> None:
    gw = gateway_server.gw
    assert gw is not None

    def broken(*_a: Any, **_k: Any) -> None:
        raise TimeoutError("a bug's own timeout, not the database's")

    monkeypatch.setattr(type(gw.planning), "set_setting", lambda *_a, **_k: broken())
    r = await api.put("/api/v1/site/limits", headers=OPERATOR, json={"import_kw": 10.0, "export_kw": 10.0})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"


async def test_a_stored_building_load_time_ahead_of_the_clock_does_not_refuse_every_reading(
        gateway_factory: Any) -> None:
    # A simulation (a scaled clock, a later start) stored its reading's time days ahead of the
    # real clock on the same database: every reading with a time was refused as stale until the
    # clock caught up with it.
    from gateway.bus.site_inputs import BUILDING_LOAD_KEY

    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    ahead = h.gw.clock.now() + timedelta(days=2)
    await h.gw.planning.set_setting(BUILDING_LOAD_KEY, {"power_kw": 70.0, "forecast": [], "at": to_rfc3339(ahead)},
                                    "test", h.gw.clock.now())
    await h.restart()
    assert h.gw.state.building_load_kw == 70.0  # the value is still what the site had last
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.put("/api/v1/site/building-load", headers=OPERATOR,
                          json={"power_kw": 40.0, "ts": to_rfc3339(h.gw.clock.now())})
    assert r.status_code == 200, r.text
    assert h.gw.state.building_load_kw == 40.0
