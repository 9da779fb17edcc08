"""`gateway station|token|db` as an operator uses them: EVSEs checked before anything is written,
every station listed, a disable that says what it does, and logging set up as for serve."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess

import asyncpg
import pytest

from gateway.domain import EVSE_ID_MAX
from tests.test_cli import GATEWAY, PASSWORD


def gateway(args: list[str], database_url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DATABASE_URL"] = database_url
    return subprocess.run([GATEWAY, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120,
                          check=False)


async def fetch(database_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_evse_specs_are_read_with_the_rest_apis_bounds() -> None:
    from gateway.db.admin import parse_evses

    assert parse_evses(["1:11", "2:22:7.5", f"{EVSE_ID_MAX}:2000:2000"]) == [
        (1, 11.0, 0.0), (2, 22.0, 7.5), (EVSE_ID_MAX, 2000.0, 2000.0)]
    assert parse_evses(None) == []


@pytest.mark.parametrize("spec", [
    "1:abc", "x:11", "1", "1:11:11:11", "1.5:11", "0:11", f"{EVSE_ID_MAX + 1}:11", "1:-1", "1:2000.5",
    "1:11:-0.1", "1:11:2001", "1:nan", "1:inf", "1:11:NaN", "",
])
def test_a_bad_evse_spec_is_refused(spec: str) -> None:
    from gateway.db.admin import EvseSpecError, parse_evses

    with pytest.raises(EvseSpecError, match="--evse"):
        parse_evses([spec])


def test_an_evse_given_twice_is_refused() -> None:
    from gateway.db.admin import EvseSpecError, parse_evses

    with pytest.raises(EvseSpecError, match="more than once"):
        parse_evses(["1:11", "2:11", "1:22"])
    assert not math.isnan(parse_evses(["1:0"])[0][1])


def test_station_add_with_a_bad_evse_writes_nothing(clean_db: str) -> None:
    result = gateway(["station", "add", "CS-EVSE", "--password-stdin", "--evse", "1:11", "--evse", "2:abc"],
                     clean_db, stdin=PASSWORD + "\n")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "--evse" in result.stderr and "2:abc" in result.stderr
    assert asyncio.run(fetch(clean_db, "SELECT id FROM stations")) == []
    assert asyncio.run(fetch(clean_db, "SELECT station_id FROM evses")) == []
    ok = gateway(["station", "add", "CS-EVSE", "--password-stdin", "--evse", "1:11", "--evse", "2:22:11"],
                 clean_db, stdin=PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    rows = asyncio.run(fetch(clean_db, "SELECT evse_id, max_charge_kw, max_discharge_kw, bidirectional "
                                       "FROM evses ORDER BY evse_id"))
    assert [tuple(r) for r in rows] == [(1, 11.0, 0.0, False), (2, 22.0, 11.0, True)]


def test_station_list_shows_every_station(clean_db: str) -> None:
    # More than the repository's default page (1000): the list used to stop there without a word.
    count = 1234

    async def insert() -> None:
        conn = await asyncpg.connect(clean_db.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.executemany(
                "INSERT INTO stations (id, security_profile, enabled, registered_at) VALUES ($1, 1, true, now())",
                [(f"CS-{i:05d}",) for i in range(count)])
        finally:
            await conn.close()

    asyncio.run(insert())
    listed = gateway(["station", "list"], clean_db)
    assert listed.returncode == 0, listed.stderr
    ids = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert ids == [f"CS-{i:05d}" for i in range(count)]


def test_station_disable_says_what_it_does(clean_db: str) -> None:
    assert gateway(["station", "add", "CS-DIS", "--password-stdin"], clean_db, stdin=PASSWORD + "\n").returncode == 0
    result = gateway(["station", "disable", "CS-DIS"], clean_db)
    assert result.returncode == 0, result.stderr
    assert "closes its live connection" in result.stdout  # tests/gateway/test_station_changes.py
    rows = asyncio.run(fetch(clean_db, "SELECT enabled FROM stations WHERE id = 'CS-DIS'"))
    assert [r["enabled"] for r in rows] == [False]


def test_station_add_on_a_registered_id_says_what_it_replaced(clean_db: str) -> None:
    """Re-running `station add` is how a password (or profile, or discharge setting) is changed:
    it replaces what the command gives, keeps what it does not, re-enables a disabled station, and
    says so rather than "registered" again."""
    first = gateway(["station", "add", "CS-AGAIN", "--password-stdin", "--evse", "1:11", "--evse", "2:11",
                     "--discharge-dialect", "none", "--discharge-undeclared-evs", "yes"],
                    clean_db, stdin=PASSWORD + "\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "station CS-AGAIN registered (security profile 1)\n"

    again = gateway(["station", "add", "CS-AGAIN", "--password-stdin", "--security-profile", "2",
                     "--evse", "1:22:11"], clean_db, stdin="another-long-password\n")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "station CS-AGAIN updated: password, security profile (2) and ratings of EVSE 1 replaced\n"
    kept = asyncio.run(fetch(clean_db, "SELECT discharge_dialect, discharge_undeclared_evs FROM stations"))
    assert [tuple(r) for r in kept] == [("none", True)]  # not given again: not reset to the defaults

    assert gateway(["station", "disable", "CS-AGAIN"], clean_db).returncode == 0
    reenabled = gateway(["station", "add", "CS-AGAIN", "--security-profile", "3", "--discharge-undeclared-evs",
                         "site"], clean_db)
    assert reenabled.returncode == 0, reenabled.stderr
    assert reenabled.stdout == ("station CS-AGAIN updated: password (removed: the certificate is the credential), "
                                "security profile (3) and discharge of undeclared EVs (site) replaced; "
                                "enabled (it was disabled)\n")
    rows = asyncio.run(fetch(clean_db, "SELECT security_profile, enabled, password_hash, discharge_dialect, "
                                       "discharge_undeclared_evs FROM stations"))
    assert [tuple(r) for r in rows] == [(3, True, None, "none", None)]
    evses = asyncio.run(fetch(clean_db, "SELECT evse_id, max_charge_kw FROM evses ORDER BY evse_id"))
    assert [tuple(r) for r in evses] == [(1, 22.0), (2, 11.0)]  # EVSE 2, not given again, is kept


def test_station_add_with_the_registered_password_keeps_its_hash(clean_db: str) -> None:
    """A new hash of the same password would read as a new password, and a running gateway ends
    the session of a station whose password changed: changing a rating must not do that."""
    assert gateway(["station", "add", "CS-SAME", "--password-stdin", "--security-profile", "2"],
                   clean_db, stdin=PASSWORD + "\n").returncode == 0
    before = asyncio.run(fetch(clean_db, "SELECT password_hash FROM stations"))
    again = gateway(["station", "add", "CS-SAME", "--password-stdin", "--evse", "1:22"], clean_db,
                    stdin=PASSWORD + "\n")
    assert again.returncode == 0, again.stderr
    assert again.stdout == ("station CS-SAME updated: ratings of EVSE 1 replaced "
                            "(the password given is the one registered: kept)\n")
    after = asyncio.run(fetch(clean_db, "SELECT password_hash, security_profile FROM stations"))
    assert [tuple(r) for r in after] == [(before[0]["password_hash"], 2)]  # profile not given: kept
    changed = gateway(["station", "add", "CS-SAME", "--password-stdin"], clean_db, stdin="another-long-password\n")
    assert changed.stdout == "station CS-SAME updated: password replaced\n"
    assert asyncio.run(fetch(clean_db, "SELECT password_hash FROM stations"))[0][0] != before[0]["password_hash"]


@pytest.mark.parametrize("cmd", [["station", "list"], ["token", "list"], ["db", "current"]])
def test_admin_commands_log_as_asked(clean_db: str, cmd: list[str]) -> None:
    result = gateway([*cmd, "--log-level", "DEBUG", "--log-json"], clean_db)
    assert result.returncode == 0, result.stderr
    # asyncio reports its selector at DEBUG when the command's event loop starts: with logging set
    # up as asked, that arrives as one JSON object on stderr.
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(r["level"] == "DEBUG" for r in records), result.stderr
    quiet = gateway([*cmd, "--log-level", "ERROR"], clean_db)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


async def test_a_station_and_its_evses_are_stored_in_one_commit(clean_db: str) -> None:
    """A write that fails part-way (here the second EVSE's id is refused) leaves no
    station without its EVSEs; a re-registration replaces the ratings and keeps a known phase count."""
    from gateway.clock import RealClock
    from gateway.db.engine import make_engine, sessionmaker
    from gateway.db.stations import EvseRow, StationRepository

    engine = make_engine(clean_db, pool_size=1)
    repo = StationRepository(sessionmaker(engine))
    now = RealClock().now()
    try:
        too_big = EvseRow(2**40, 11.0, 0.0, False)  # no integer column takes it
        with pytest.raises(Exception):  # noqa: B017  # whichever layer refuses it first
            await repo.add("CS-ONE", "h", now=now, evses=[EvseRow(1, 11.0, 0.0, False), too_big])
        assert await fetch(clean_db, "SELECT id FROM stations WHERE id='CS-ONE'") == []
        assert await repo.add("CS-ONE", "h", now=now, evses=[EvseRow(1, 11.0, 0.0, False, phases=1)]) is True
        assert await repo.add("CS-ONE", "h", now=now, evses=[EvseRow(1, 22.0, 11.0, True)]) is False
        rows = await fetch(clean_db, "SELECT max_charge_kw, max_discharge_kw, bidirectional, phases FROM evses "
                                     "WHERE station_id='CS-ONE'")
        assert [tuple(r) for r in rows] == [(22.0, 11.0, True, 1)]
    finally:
        await engine.dispose()


def test_station_list_names_the_node_holding_each_connection(clean_db: str) -> None:
    for sid in ("CS-ON", "CS-OFF"):
        assert gateway(["station", "add", sid, "--password-stdin"], clean_db, stdin=PASSWORD + "\n").returncode == 0

    async def connect_on_node() -> None:
        conn = await asyncpg.connect(clean_db.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute("UPDATE stations SET connected = true, connected_node = 'node-7' WHERE id = 'CS-ON'")
        finally:
            await conn.close()

    asyncio.run(connect_on_node())
    listed = gateway(["station", "list"], clean_db)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[3] for line in listed.stdout.splitlines()[1:]}
    assert rows == {"CS-ON": "node-7", "CS-OFF": "no"}
