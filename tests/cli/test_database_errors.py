"""A database the command cannot use (nothing listening, no such database, a login the server
refuses) is one line naming its host, port and database, exit status 1, for every command that
opens it; never the URL's password, never a traceback. An unexpected error keeps its traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.test_cli import GATEWAY, PASSWORD, free_port

EXIT_TIMEOUT_S = 60
SECRET = "s3cret-in-the-url"

SERVE = ["serve", "--ocpp-port", "0", "--api-port", "0", "--no-scheduler",
         "--ocpp-host", "127.0.0.1", "--api-host", "127.0.0.1"]
# Every command that opens the database, each as it would otherwise succeed.
DATABASE_COMMANDS = {
    "serve": SERVE,
    "serve --migrate": [*SERVE, "--migrate"],
    "db upgrade": ["db", "upgrade"],
    "db downgrade": ["db", "downgrade", "base"],
    "db current": ["db", "current"],
    "station add": ["station", "add", "CS-DBERR", "--password-stdin", "--evse", "1:11"],
    "station list": ["station", "list"],
    "station disable": ["station", "disable", "CS-DBERR"],
    "token add": ["token", "add", "04A2B3C4"],
    "token list": ["token", "list"],
    "demo": ["demo", "--stations", "2", "--api-port", "0", "--ocpp-port", "0"],
    "sim --register": ["sim", "--register", "--password", PASSWORD, "--stations", "2",
                       "--url", "ws://127.0.0.1:1/ocpp", "--no-progress"],
}


def gateway(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env.update(env or {})
    return subprocess.run([GATEWAY, *args], input=PASSWORD + "\n", capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=EXIT_TIMEOUT_S, check=False)


def with_url(cmd: list[str], url: str) -> list[str]:
    return [*cmd, "--database-url", url]


def url_of(server_url: str, **parts: str | int) -> str:
    url = make_url(server_url)
    if "host" in parts:
        # A TCP host and port instead of the embedded server's Unix socket: its ?host=<dir> would
        # still win, and the error would be that socket's (no such file), not the port's.
        url = url.difference_update_query(["host"])
    return url.set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


def _where(server: Any) -> str:
    """The server as the error names it: host and port, the Unix socket's directory as host for
    the embedded server (its URL's ?host=)."""
    host = server.host or server.query.get("host")
    return f"{host}:{server.port or 5432}"


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of stderr, checked to be the gateway's one-line error."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: error: "), result.stderr
    assert SECRET not in result.stderr and SECRET not in result.stdout
    return lines[0]


@pytest.mark.parametrize("cmd", DATABASE_COMMANDS.values(), ids=DATABASE_COMMANDS.keys())
def test_a_closed_port_is_one_line(database_server_url: str, tmp_path: Path, cmd: list[str]) -> None:
    port = free_port()  # bound and closed: nothing listens there
    url = url_of(database_server_url, host="127.0.0.1", port=port, password=SECRET)
    line = error_line(gateway(with_url(cmd, url), tmp_path))
    database = make_url(database_server_url).database
    assert f'cannot reach the database "{database}" at 127.0.0.1:{port} (connection refused)' in line
    assert "--database-url" in line


def test_the_variable_it_came_from_is_named(database_server_url: str, tmp_path: Path) -> None:
    url = url_of(database_server_url, host="127.0.0.1", port=free_port(), password=SECRET)
    line = error_line(gateway(["station", "list"], tmp_path, {"GATEWAY_DATABASE_URL": url}))
    assert "connection refused" in line and "GATEWAY_DATABASE_URL" in line


@pytest.mark.parametrize("cmd", ["serve", "db upgrade", "db current", "station add", "token list", "demo"])
def test_a_missing_database_is_one_line(database_server_url: str, tmp_path: Path, cmd: str) -> None:
    name = f"gw_missing_{uuid.uuid4().hex[:8]}"
    server = make_url(database_server_url)
    url = url_of(database_server_url, database=name, password=SECRET)
    line = error_line(gateway(with_url(DATABASE_COMMANDS[cmd], url), tmp_path))
    assert f'database "{name}" does not exist on {_where(server)}' in line


@pytest.mark.parametrize("cmd", ["serve", "db upgrade", "station list", "token add", "sim --register"])
def test_an_unknown_role_is_one_line(database_server_url: str, tmp_path: Path, cmd: str) -> None:
    role = f"gw_no_role_{uuid.uuid4().hex[:8]}"
    server = make_url(database_server_url)
    url = url_of(database_server_url, username=role, password=SECRET)
    line = error_line(gateway(with_url(DATABASE_COMMANDS[cmd], url), tmp_path))
    assert f"at {_where(server)} refused the login" in line
    assert f'role "{role}" does not exist' in line


def test_a_connection_error_not_from_the_database_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same OSError out of anything but asyncpg connecting (the simulator's WebSocket, the MQTT
    broker) is not reported as the database."""
    from gateway import cli

    def refused(args: argparse.Namespace) -> int:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")

    monkeypatch.setattr(cli, "_run", refused)
    with pytest.raises(ConnectionRefusedError):
        cli.main(["station", "list", "--database-url", "postgresql://u@127.0.0.1:5432/gw"])


def test_a_password_with_an_unescaped_at_sign_is_not_shown_as_the_host() -> None:
    from gateway.cli import _database_place

    # The URL parser splits at the first "@": the password's rest read as the host's start.
    assert _database_place("postgresql://postgres:S3cret@PW@127.0.0.1:5432/db") == ("127.0.0.1:5432", "db")
    assert _database_place("postgresql://u:pw@db.example:5433/app") == ("db.example:5433", "app")
