"""docs/reliability.md R2 at full size: schema-generated CALLs of every station-to-CSMS 2.0.1 action
against `gateway serve` on a fresh database, over one authenticated WebSocket.

    .venv/bin/python bench/ocpp_fuzz.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test \
        [--frames 10000] [--seed 2026] [--valid-share 0.67]

Valid payloads (``simulators.frames.FrameFuzzer.valid``) must be answered with a CALLRESULT that
passes the action's response schema; payloads broken in one known way (``mutated``) with the
CALLERROR their fault calls for (OCPP-J Part 4). Prints one JSON object: frames sent, answers by
kind, every wrong answer (first 20), the gateway still alive, frames per second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import time
from collections import Counter
from typing import Any

from benchlib import fresh_database, register_stations, spawn_gateway
from websockets.asyncio.client import connect

from gateway.ocpp.validation import V201_STATION_ACTIONS
from simulators.frames import FrameFuzzer, wrong_answer

STATION = "FUZZ0001"
PASSWORD = "fuzz-password-0123456789"


async def run(port: int, frames: int, seed: int, valid_share: float) -> dict[str, Any]:
    actions = sorted(V201_STATION_ACTIONS)
    fz = FrameFuzzer(random.Random(seed))
    auth = base64.b64encode(f"{STATION}:{PASSWORD}".encode()).decode()
    answers: Counter[str] = Counter()
    wrong: list[str] = []
    started = time.perf_counter()
    async with connect(f"ws://127.0.0.1:{port}/ocpp/{STATION}", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                       additional_headers={"Authorization": f"Basic {auth}"}, max_size=2**22) as ws:
        for i in range(frames):
            action = actions[i % len(actions)]
            valid = random.Random(seed * 1_000_003 + i).random() < valid_share
            payload, kind = (fz.valid(action), "valid") if valid else fz.mutated(action)
            mid = f"f{i}"
            await ws.send(json.dumps([2, mid, action, payload]))
            while True:  # skip any CALL the gateway sends us (profiles, requests)
                reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if reply[0] == 2:
                    await ws.send(json.dumps([4, reply[1], "NotImplemented", "fuzzer", {}]))
                    continue
                break
            problem = (f"{action}: answer to another id {reply[:3]}" if reply[1] != mid
                       else wrong_answer(action, kind, reply))
            if problem is not None:
                wrong.append(f"{i} {problem}")
            else:
                answers[f"{'CALLRESULT' if kind == 'valid' else reply[2]} ({kind})"] += 1
        await ws.send(json.dumps([2, "last", "Heartbeat", {}]))
        while True:  # the gateway may send a CALL of its own first: answer it and read on
            last = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if last[0] == 2:
                await ws.send(json.dumps([4, last[1], "NotImplemented", "fuzzer", {}]))
                continue
            break
        alive = last[0] == 3 and last[1] == "last"
    took = time.perf_counter() - started
    return {"frames": frames, "seed": seed, "answers": dict(sorted(answers.items())), "wrong": len(wrong),
            "wrong_first": wrong[:20], "socket_alive_after": alive, "seconds": round(took, 1),
            "frames_per_s": round(frames / took, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True, help="a Postgres server; a fresh database is made on it")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--valid-share", type=float, default=0.67)
    a = ap.parse_args()
    with fresh_database(a.database_url) as url:
        register_stations(url, [STATION], PASSWORD)
        proc, port = spawn_gateway(url, "--no-scheduler")
        try:
            result = asyncio.run(run(port, a.frames, a.seed, a.valid_share))
            result["gateway_running"] = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    print(json.dumps(result))
    # A run that found a wrong answer, a closed socket or a dead gateway fails, whatever it printed.
    return 0 if result["wrong"] == 0 and result["socket_alive_after"] and result["gateway_running"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
