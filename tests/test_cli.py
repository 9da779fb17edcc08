"""The command line as an operator uses it: register stations, migrate, serve, stop with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import EVENT_TIMEOUT_S
from tests.ocpp_client import RawStation

GATEWAY = str(Path(sys.executable).with_name("gateway"))
PASSWORD = "a-long-station-password"


def run(args: list[str], database_url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url}
    return subprocess.run([GATEWAY, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_station_add_and_list(clean_db: str) -> None:
    added = run(["station", "add", "CS-CLI-1", "--password-stdin", "--security-profile", "1",
                 "--evse", "1:11:11"], clean_db, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    listed = run(["station", "list"], clean_db)
    assert listed.returncode == 0 and "CS-CLI-1" in listed.stdout
    dc = run(["station", "add", "CS-CLI-DC", "--password-stdin", "--evse", "1:50:50",
              "--discharge-undeclared-evs", "yes"], clean_db, stdin=PASSWORD + "\n")
    assert dc.returncode == 0, dc.stderr
    rows = asyncio.run(_fetch(clean_db, "SELECT id, discharge_undeclared_evs FROM stations ORDER BY id"))
    assert [(r["id"], r["discharge_undeclared_evs"]) for r in rows] == [("CS-CLI-1", None), ("CS-CLI-DC", True)]


async def _fetch(database_url: str, sql: str) -> list[dict[str, object]]:
    from tests.gateway.test_handlers import fetch

    return [dict(r) for r in await fetch(database_url, sql)]


def test_station_add_refuses_short_password_and_bad_id(clean_db: str) -> None:
    short = run(["station", "add", "CS-CLI-2", "--password-stdin"], clean_db, stdin="short\n")
    assert short.returncode == 2 and "16 to 40" in short.stderr
    bad = run(["station", "add", "bad:id", "--password-stdin"], clean_db, stdin=PASSWORD + "\n")
    assert bad.returncode == 2 and "invalid station id" in bad.stderr


def test_a_profile_3_station_is_registered_without_a_password(clean_db: str) -> None:
    added = run(["station", "add", "CS-CERT", "--security-profile", "3"], clean_db)
    assert added.returncode == 0, added.stderr
    listed = run(["station", "list"], clean_db).stdout
    assert [line.split()[:2] for line in listed.splitlines() if line.startswith("CS-CERT")] == [["CS-CERT", "3"]]
    both = run(["station", "add", "CS-CERT", "--security-profile", "3", "--password-stdin"], clean_db,
               stdin=PASSWORD + "\n")
    assert both.returncode == 2 and "certificate" in both.stderr
    none = run(["station", "add", "CS-PW"], clean_db)
    assert none.returncode == 2 and "--password-stdin" in none.stderr


def test_db_upgrade_is_idempotent(clean_db: str) -> None:
    result = run(["db", "upgrade"], clean_db)
    assert result.returncode == 0, result.stderr


async def test_serve_health_metrics_and_sigterm_closes_1001(clean_db: str) -> None:
    assert run(["station", "add", "CS-SIG", "--password-stdin"], clean_db, stdin=PASSWORD + "\n").returncode == 0
    ocpp_port, api_port = free_port(), free_port()
    proc = subprocess.Popen(
        [GATEWAY, "serve", "--ocpp-port", str(ocpp_port), "--api-port", str(api_port), "--database-url", clean_db,
         "--no-scheduler"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + EVENT_TIMEOUT_S
            while True:
                try:
                    r = await client.get(f"http://127.0.0.1:{api_port}/api/v1/health")
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "gateway did not come up"
                await asyncio.sleep(0.1)
            st = await RawStation.connect(f"ws://127.0.0.1:{ocpp_port}/ocpp", "CS-SIG", PASSWORD)
            assert "currentTime" in await st.ok("Heartbeat", {})
            metrics = (await client.get(f"http://127.0.0.1:{api_port}/metrics")).text
            assert "gateway_stations_connected 1.0" in metrics
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(st.ws.wait_closed(), 10)
        assert st.ws.close_code == 1001
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read() if proc.stdout else ""
    assert PASSWORD not in out


@pytest.mark.parametrize("cmd", [["serve"], ["station", "list"]])
def test_missing_database_url_is_a_clear_error(cmd: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_DATABASE_URL"}
    result = subprocess.run([GATEWAY, *cmd], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 2 and "database URL" in (result.stdout + result.stderr)


def test_a_typo_in_the_site_file_is_named_without_a_traceback(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[site]\nimport_limit_kW = 80\n")
    result = subprocess.run([GATEWAY, "serve", "--config", str(site), "--database-url", "postgresql+asyncpg://x/y"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "site.import_limit_kW: unknown key" in result.stderr and "Traceback" not in result.stderr


async def test_the_api_and_ocpp_may_share_a_port_on_different_addresses(clean_db: str) -> None:
    """What the servers can bind is for them to say: one port on two addresses is a valid set-up."""
    port = free_port()
    proc = subprocess.Popen(
        [GATEWAY, "serve", "--ocpp-host", "127.0.0.1", "--ocpp-port", str(port), "--api-host", "127.0.0.2",
         "--api-port", str(port), "--database-url", clean_db, "--no-scheduler"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + EVENT_TIMEOUT_S
            while proc.poll() is None:
                try:
                    if (await client.get(f"http://127.0.0.2:{port}/api/v1/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "gateway did not come up"
                await asyncio.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
