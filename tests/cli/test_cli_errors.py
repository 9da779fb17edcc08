"""What the operator sees when the command line, the environment or the database is not right:
one line naming the setting, argparse's exit status 2 (1 for a database or port problem), no
Python traceback, and nothing started."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.test_cli import GATEWAY, free_port

# Generous for a cold interpreter on a loaded box; a refused setting exits within a few seconds, so
# a run that reaches this started serving what it should have refused.
EXIT_TIMEOUT_S = 45


def gateway(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env.update(env or {})
    return subprocess.run([GATEWAY, *args], capture_output=True, text=True, env=full_env,
                          timeout=EXIT_TIMEOUT_S, check=False)


def serve_args(database_url: str, *extra: str, env: dict[str, str] | None = None) -> list[str]:
    """serve on any free local ports, except where the test sets the port (a flag overrides env)."""
    ports = [a for name in ("ocpp_port", "api_port") if f"GATEWAY_{name.upper()}" not in (env or {})
             for a in ("--" + name.replace("_", "-"), "0")]
    return ["serve", *ports, "--no-scheduler", "--database-url", database_url,
            "--ocpp-host", "127.0.0.1", "--api-host", "127.0.0.1", *extra]


def assert_usage_error(result: subprocess.CompletedProcess[str], *names: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("gateway: error: ") for line in lines), result.stderr
    for name in names:
        assert name in result.stderr


@pytest.mark.parametrize(("extra", "env", "named"), [
    (["--ocpp-port", "70000"], {}, "--ocpp-port"),
    ([], {"GATEWAY_OCPP_PORT": "abc"}, "GATEWAY_OCPP_PORT"),
    (["--log-level", "foo"], {}, "--log-level"),
    ([], {"GATEWAY_LOG_LEVEL": "verbose"}, "GATEWAY_LOG_LEVEL"),
    (["--time-scale", "0"], {}, "--time-scale"),
    (["--sim-start", "yesterday"], {}, "--sim-start"),
    (["--mqtt-url", "http://broker:1883"], {}, "--mqtt-url"),
    ([], {"GATEWAY_MQTT_URL": "mqtt://"}, "GATEWAY_MQTT_URL"),
    ([], {"GATEWAY_MAX_STATION_ID_LENGTH": "60"}, "GATEWAY_MAX_STATION_ID_LENGTH"),
    ([], {"GATEWAY_SCHEDULER_BACKEND": "hihgs"}, "GATEWAY_SCHEDULER_BACKEND"),
    (["--tls-cert", "/nonexistent.pem", "--tls-client-ca", "/nonexistent-ca.pem"], {}, "--tls-key"),
    (["--tls-key", "/nonexistent.key"], {}, "--tls-cert"),
    ([], {"GATEWAY_TLS_CLIENT_CA": "/nonexistent-ca.pem"}, "--tls-cert"),
])
def test_serve_refuses_a_bad_setting_before_starting(
        clean_db: str, extra: list[str], env: dict[str, str], named: str) -> None:
    assert_usage_error(gateway(serve_args(clean_db, *extra, env=env), env), named)


def test_serve_refuses_a_bad_database_url() -> None:
    result = gateway(["serve", "--database-url", "mysql://user@127.0.0.1/gw"])
    assert_usage_error(result, "--database-url")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    import trustme

    cert = trustme.CA().issue_cert("127.0.0.1")
    paths = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[1]))
    return paths


def test_serve_refuses_tls_files_it_cannot_use(clean_db: str, tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = tls_files
    missing = gateway(serve_args(clean_db, "--tls-cert", "/nonexistent.pem", "--tls-key", str(key)))
    assert_usage_error(missing, "--tls-cert", "/nonexistent.pem")
    # Running as root reads any file: a directory stands in for a path that cannot be read.
    unreadable = gateway(serve_args(clean_db, "--tls-cert", str(cert), "--tls-key", str(key)),
                         {"GATEWAY_TLS_CLIENT_CA": str(tmp_path)})
    assert_usage_error(unreadable, "GATEWAY_TLS_CLIENT_CA")
    swapped = gateway(serve_args(clean_db, "--tls-cert", str(key), "--tls-key", str(cert)))
    assert_usage_error(swapped, "--tls-cert", "--tls-key")
    not_a_ca = tmp_path / "empty.pem"
    not_a_ca.write_text("")
    bad_ca = gateway(serve_args(clean_db, "--tls-cert", str(cert), "--tls-key", str(key),
                                "--tls-client-ca", str(not_a_ca)))
    assert_usage_error(bad_ca, "--tls-client-ca")


def test_station_commands_refuse_bad_settings_too(clean_db: str) -> None:
    assert_usage_error(gateway(["station", "list", "--database-url", clean_db, "--log-level", "foo"]),
                       "--log-level")
    assert_usage_error(gateway(["token", "list"], {"GATEWAY_DATABASE_URL": clean_db,
                                                   "GATEWAY_SCHEDULER_BACKEND": "auto ", }),
                       "GATEWAY_SCHEDULER_BACKEND")
    assert_usage_error(gateway(["db", "current", "--database-url", "mysql://u@h/db"]), "--database-url")


@pytest.mark.parametrize("cmd", [["serve"], ["db", "upgrade"], ["station", "list"]])
def test_no_database_url_is_said_on_stderr(cmd: list[str]) -> None:
    result = gateway(cmd)
    assert result.returncode == 2 and "database URL" in result.stderr and result.stdout == ""


@pytest.fixture
def unmigrated_db(database_server_url: str) -> Iterator[str]:
    """An empty database: created, never migrated."""
    name = f"gw_unmigrated_{uuid.uuid4().hex[:8]}"
    head, _, tail = database_server_url.partition("?")
    url = f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{tail}" if tail else "")
    plain = database_server_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(plain)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("cmd", [["serve", "--ocpp-port", "0", "--api-port", "0", "--no-scheduler"],
                                 ["station", "list"], ["token", "list"]])
def test_an_unmigrated_database_says_to_migrate(unmigrated_db: str, cmd: list[str]) -> None:
    result = gateway([*cmd, "--database-url", unmigrated_db])
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "gateway: error: " in result.stderr and "gateway db upgrade" in result.stderr
    assert "does not exist" in result.stderr


@pytest.mark.parametrize("busy", ["--ocpp-port", "--api-port"])
def test_a_port_in_use_is_one_line(clean_db: str, busy: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        other = "--api-port" if busy == "--ocpp-port" else "--ocpp-port"
        result = gateway(["serve", busy, port, other, str(free_port()), "--no-scheduler", "--database-url", clean_db,
                          "--ocpp-host", "127.0.0.1", "--api-host", "127.0.0.1"])
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gateway: error: ")]
    assert len(errors) == 1 and "in use" in errors[0] and port in errors[0], result.stderr


@pytest.mark.parametrize("cmd", [["serve", "--ocpp-port", "0", "--api-port", "0", "--no-scheduler"],
                                 ["station", "list"]])
def test_a_database_a_migration_behind_says_to_migrate(unmigrated_db: str, cmd: list[str]) -> None:
    """After an upgrade of the gateway, before `db upgrade`: a column the code reads is missing
    (not a table), which is the same advice."""
    assert gateway(["db", "upgrade", "0013", "--database-url", unmigrated_db]).returncode == 0
    result = gateway([*cmd, "--database-url", unmigrated_db])
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "gateway: error: the database is not migrated" in result.stderr and "gateway db upgrade" in result.stderr
