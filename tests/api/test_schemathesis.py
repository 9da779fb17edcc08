"""docs/reliability.md A1: schemathesis, every check (auth included), against the OpenAPI spec of a
real gateway (real Postgres, real HTTP).

The schemathesis CLI runs in a child process against the gateway's REST port. It cannot run
in-process on the ASGI app here: its ASGI transport drives the app from another event loop,
and the gateway's database pool and OCPP registry belong to the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import OPERATOR, PluggedStation, plug_in
from tests.conftest import GatewayHarness

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES_PER_OPERATION = 20
RUN_TIME_MAX_S = 60

# 422 is also how the API answers schema-valid requests that break a rule JSON Schema cannot
# state (a departure in the past, end before start, energy above the battery): each such answer
# names its reason. Schema-invalid requests must still be refused (negative_data_rejection).
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
"""

# What a well-behaved station answers, so commands reach their 200 path (their error paths
# are tested one by one in test_commands.py).
ANSWERS: dict[str, dict[str, Any]] = {
    "Reset": {"status": "Accepted"},
    "TriggerMessage": {"status": "Accepted"},
    "UnlockConnector": {"status": "Unlocked"},
    "ChangeAvailability": {"status": "Accepted"},
    "ClearChargingProfile": {"status": "Unknown"},
    "SetChargingProfile": {"status": "Accepted"},
}


async def _answer_everything(st: PluggedStation) -> None:
    while True:
        call = await st.ws.incoming_calls.get()
        await st.ws.answer(call, ANSWERS.get(call[2], {"status": "Accepted"}))


async def test_schemathesis_finds_nothing(
    gateway_server: GatewayHarness, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    # Something to find: a station with a live session, so the happy paths are reachable too.
    st = await plug_in(gateway_server, "CS-FUZZ", "tx-fuzz", "TOKEN-FUZZ")
    spec = (await api.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"

    answering = asyncio.create_task(_answer_everything(st))
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{gateway_server.api_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        "20261123",
        "--header",
        f"Authorization:{OPERATOR['Authorization']}",
        "--max-time",
        str(RUN_TIME_MAX_S),
        "--request-timeout",
        "30",
        "--generation-allow-x00",
        "true",
        "--warnings",
        "off",
        cwd=tmp_path,  # its cache stays out of the work tree
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIME_MAX_S + 60)
    answering.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await answering
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-20_000:]
    # Every operation of the spec was exercised, none skipped.
    operations = sum(len(methods) for methods in spec["paths"].values())
    assert operations >= 30 and f"Tested: {operations}" in text, text[-5_000:]
    await st.ws.close()
