"""The simulated site's own inputs, sent to a running gateway over its REST API, as the site's
operator and energy system would: the episode's import and export limits and tariff at the start,
its grid events, and the building's load every simulated minute (with the day-ahead forecast the
energy system pushes, where the episode has one).

Without it a fleet run against ``gateway serve`` is planned with the gateway's own limits and
tariff and no building load, and the fleet's summary compares the site with a limit the gateway
never heard of (``gateway sim --api-url ... --api-key ...``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import httpx

from gateway import sitetime
from gateway.clock import Clock, to_rfc3339
from gateway.episode import Episode

log = logging.getLogger(__name__)

# How often the building's load is sent (simulated seconds): the fleet samples the site each minute.
READING_EVERY_SIM_S = 60.0
# The stretch of the energy system's forecast each push carries (a long episode's whole forecast
# would exceed what one request may hold), and how often it is pushed again.
FORECAST_AHEAD = timedelta(hours=36)
FORECAST_EVERY = timedelta(hours=1)
REQUEST_TIMEOUT_S = 10.0


class SiteFeedError(Exception):
    """The gateway refused the site's inputs: the run would be planned on something else."""


def pushed_forecast(episode: Episode) -> list[tuple[datetime, float]]:
    """The day-ahead forecast the building's energy system pushes: the episode's (never its true
    load, which no energy system knows in advance); none when the episode has none, and the gateway
    plans with the profile it learns and the reading now."""
    bl = episode.building_load
    if bl is None or bl.forecast_kw is None:
        return []
    return [(bl.start + timedelta(seconds=bl.step_s * i), kw) for i, kw in enumerate(bl.forecast_kw)]


def site_requests(episode: Episode) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, body) of what the site tells the gateway once, before its day starts."""
    t = episode.tariff
    out: list[tuple[str, str, dict[str, Any]]] = [
        ("PUT", "/api/v1/site/limits", {"import_kw": episode.limits.import_kw,
                                        "export_kw": episode.limits.export_kw}),
        ("PUT", "/api/v1/tariff", {
            "periods": [{"start_hour": p.start_hour, "end_hour": p.end_hour, "import_price": p.import_price,
                         "export_price": p.export_price} for p in t.periods],
            "demand_charge_per_kw": t.demand_charge_per_kw, "default_import_price": t.default_import_price,
            "default_export_price": t.default_export_price}),
    ]
    for g in episode.grid_events:
        body: dict[str, Any] = {"id": g.id, "start": to_rfc3339(g.start), "end": to_rfc3339(g.end),
                                "kind": g.kind.value, "payment_per_kwh": g.payment_per_kwh}
        if g.cap_kw is not None:
            body["cap_kw"] = g.cap_kw
        out.append(("POST", "/api/v1/grid-events", body))
    return out


class SiteFeed:
    """Sends ``episode``'s site to the gateway's REST API at ``api_url`` with the operator's key."""

    def __init__(self, api_url: str, api_key: str, episode: Episode, clock: Clock) -> None:
        self.episode = episode
        self.clock = clock
        self._http = httpx.AsyncClient(base_url=api_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"},
                                       timeout=REQUEST_TIMEOUT_S)
        self._forecast = pushed_forecast(episode)
        self._forecast_sent_at: datetime | None = None
        self._unreachable = False
        self.readings_sent = 0
        self.readings_stale = 0  # refused as older than one the gateway applied

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        r = await self._http.request(method, path, json=body)
        if r.status_code in (401, 403):
            raise SiteFeedError(f"{method} {path}: HTTP {r.status_code}: the operator key was refused "
                                "(--api-key or GATEWAY_API_KEY)")
        return r

    async def start(self) -> None:
        """The limits, tariff and grid events; then the first reading. Any refusal is a
        :class:`SiteFeedError` naming what and why (the gateway's own words)."""
        try:
            await self._check_site_clock()
            for method, path, body in site_requests(self.episode):
                r = await self._send(method, path, body)
                if r.status_code >= 400:
                    raise SiteFeedError(f"{method} {path}: HTTP {r.status_code}: {_reason(r)}")
        except httpx.TransportError as exc:
            raise SiteFeedError(f"the gateway's REST API at {self._http.base_url} did not answer: {exc}") from exc
        await self.send_reading()

    async def _check_site_clock(self) -> None:
        """The tariff's hours are sent as the episode states them, and the gateway reads them on
        its site's clock: where the two clocks tell different hours during the episode, every
        price would land on the wrong hour. Refused before anything is sent."""
        if not self.episode.tariff.periods:
            return  # a flat tariff: no hour to put on the wrong clock
        r = await self._send("GET", "/api/v1/tariff", None)
        if r.status_code >= 400:
            raise SiteFeedError(f"GET /api/v1/tariff: HTTP {r.status_code}: {_reason(r)}")
        gateway_tz = str(r.json().get("timezone", sitetime.UTC_NAME))
        episode_tz = self.episode.tariff.timezone
        try:
            differs = clock_differs(gateway_tz, episode_tz, self.episode.start, self.episode.end)
        except sitetime.UnknownTimezoneError as exc:
            raise SiteFeedError(f"the gateway's site time zone: {exc}") from exc
        if differs is not None:
            raise SiteFeedError(
                f"the episode's tariff hours are on {episode_tz} time and the gateway's site is on {gateway_tz} "
                f"(at {to_rfc3339(differs)} they tell different hours), so its prices would fall on the wrong "
                f"hours: start the gateway with a site file (--config) whose [site] timezone is {episode_tz!r}")

    async def send_reading(self) -> None:
        """The building's load now, and the forecast when it is due. A gateway that does not answer
        is tried again at the next reading (said once); a refusal of the reading is an error."""
        now = self.clock.now()
        body: dict[str, Any] = {"power_kw": self.episode.building_load_at(now), "ts": to_rfc3339(now)}
        if self._forecast and (self._forecast_sent_at is None or now - self._forecast_sent_at >= FORECAST_EVERY):
            ahead = [(t, kw) for t, kw in self._forecast if now - timedelta(hours=1) <= t <= now + FORECAST_AHEAD]
            if ahead:
                body["forecast"] = [{"start": to_rfc3339(t), "power_kw": kw} for t, kw in ahead]
        try:
            r = await self._send("PUT", "/api/v1/site/building-load", body)
        except httpx.TransportError as exc:
            self._not_applied(f"the gateway's REST API did not answer: {exc}")
            return
        if r.status_code >= 500:
            # The gateway riding out its database's absence (503 not_stored: applied, not kept)
            # or busy: the next reading goes as usual.
            self._not_applied(f"HTTP {r.status_code}: {_reason(r)}")
            return
        self._unreachable = False
        if r.status_code == 409:
            # A newer reading is applied: the energy system's own over MQTT, or one a gateway
            # restarted on the same database kept from an earlier run on the same simulated day.
            if not self.readings_stale:
                log.warning("building load at %s refused as older than one the gateway applied (%s); "
                            "the gateway plans with that one until the readings pass it", to_rfc3339(now), _reason(r))
            self.readings_stale += 1
            return
        if r.status_code >= 400:
            raise SiteFeedError(f"PUT /api/v1/site/building-load: HTTP {r.status_code}: {_reason(r)}")
        if "forecast" in body:
            self._forecast_sent_at = now
        self.readings_sent += 1

    def _not_applied(self, why: str) -> None:
        if not self._unreachable:
            log.warning("building load not sent (%s); sending the next reading as usual", why)
        self._unreachable = True

    async def run(self) -> None:
        """A reading every simulated minute, until cancelled."""
        while True:
            await self.clock.sleep(READING_EVERY_SIM_S)
            await self.send_reading()


def clock_differs(a: str, b: str, start: datetime, end: datetime) -> datetime | None:
    """The first hour from ``start`` to ``end`` at which zones ``a`` and ``b`` tell different
    local times (None: the same clock all along, as "UTC" and "Etc/UTC" are)."""
    at = start
    while True:
        if sitetime.local(at, a).replace(tzinfo=None) != sitetime.local(at, b).replace(tzinfo=None):
            return at
        if at >= end:
            return None
        at = min(at + timedelta(hours=1), end)


def _reason(r: httpx.Response) -> str:
    try:
        err = r.json().get("error", {})
        return str(err.get("message") or r.text)
    except ValueError:
        return r.text.strip()
