"""D4: the gateway is killed with SIGKILL while a station streams TransactionEvents; the station
retries what was not acknowledged (new message id, as real stacks do). Nothing is lost and
nothing is stored twice, whether the kill fell before the commit or between commit and reply."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from tests.gateway.test_handlers import fetch, tx_event
from tests.ocpp_client import basic_auth
from tests.test_cli import GATEWAY, PASSWORD, free_port, run

EVENTS = 60
KILL_AFTER = (10, 25, 40)  # acknowledged events after which the gateway is killed


def start_gateway(database_url: str, port: int, api_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url}
    return subprocess.Popen([GATEWAY, "serve", "--ocpp-port", str(port), "--api-port", str(api_port),
                             "--no-scheduler", "--log-level", "ERROR"], env=env)


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(clean_db: str) -> None:
    assert run(["station", "add", "CS-KILL", "--password-stdin"], clean_db, stdin=PASSWORD + "\n").returncode == 0
    port, api_port = free_port(), free_port()
    proc = start_gateway(clean_db, port, api_port)
    acked = 0
    attempts = 0
    kills = list(KILL_AFTER)
    try:
        while acked < EVENTS:
            try:
                ws = await connect(f"ws://127.0.0.1:{port}/ocpp/CS-KILL", subprotocols=[Subprotocol("ocpp2.0.1")],
                                   additional_headers=basic_auth("CS-KILL", PASSWORD), open_timeout=5)
            except (OSError, InvalidHandshake, InvalidStatus, TimeoutError):
                await asyncio.sleep(0.2)  # the gateway is restarting: back off and knock again
                continue
            try:
                while acked < EVENTS:
                    attempts += 1
                    payload: dict[str, Any] = tx_event("Started" if acked == 0 else "Updated", acked, tid="TX-K")
                    # Events sent after a crash were queued while the link was down: offline.
                    payload["offline"] = attempts > acked + 1
                    await ws.send(json.dumps([2, f"m{attempts}", "TransactionEvent", payload]))
                    if kills and acked == kills[0]:
                        kills.pop(0)
                        proc.send_signal(signal.SIGKILL)  # mid-flight: before or after the commit
                        proc.wait(10)
                        proc = start_gateway(clean_db, port, api_port)
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert reply[0] == 3
                    acked += 1
            except (ConnectionClosed, TimeoutError):
                pass  # unacknowledged: the same event goes again on the next connection
            finally:
                await ws.close()
    finally:
        proc.terminate()
        proc.wait(15)
    rows = await fetch(clean_db, "SELECT seq_no, count(*) AS n FROM transaction_events WHERE transaction_id='TX-K' "
                                 "GROUP BY seq_no ORDER BY seq_no")
    assert [r["seq_no"] for r in rows] == list(range(EVENTS))
    assert all(r["n"] == 1 for r in rows)
    assert attempts > EVENTS  # the kills really cost retries
