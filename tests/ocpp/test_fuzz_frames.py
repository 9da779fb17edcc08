"""docs/reliability.md R2 over a real WebSocket and Postgres: schema-generated CALLs of every
station-to-CSMS action, valid and broken in one known way. Every valid one is answered with a
schema-valid CALLRESULT; every broken one with the CALLERROR its fault calls for (OCPP-J Part 4);
the connection lives throughout. ``bench/ocpp_fuzz.py`` runs the same for 10,000 frames."""

from __future__ import annotations

import random

from gateway.ocpp.validation import V201_STATION_ACTIONS
from simulators.frames import FrameFuzzer, wrong_answer
from tests.conftest import GatewayHarness
from tests.gateway.test_handlers import PASSWORD
from tests.ocpp_client import RawStation

ACTIONS = sorted(V201_STATION_ACTIONS)
FRAMES = 600  # two thirds valid


async def test_generated_frames_get_the_answer_the_schema_calls_for(gateway_server: GatewayHarness) -> None:
    await gateway_server.add_station("CS-FUZZ", PASSWORD, evses=[(1, 11.0, 11.0, True), (2, 22.0, 0.0, False)])
    st = await RawStation.connect(gateway_server.ocpp_url, "CS-FUZZ", PASSWORD)
    fz = FrameFuzzer(random.Random(2026))
    wrong: list[str] = []
    kinds = set()
    for i in range(FRAMES):
        action = ACTIONS[i % len(ACTIONS)]
        payload, kind = (fz.valid(action), "valid") if i % 3 else fz.mutated(action)
        kinds.add(kind)
        problem = wrong_answer(action, kind, await st.call(action, payload))
        if problem is not None:
            wrong.append(problem)
    assert len(kinds) == 7  # valid and every mutation
    assert not wrong, "\n".join(wrong[:20])
    assert "currentTime" in await st.ok("Heartbeat", {})  # the same socket, still answered
    await st.close()
