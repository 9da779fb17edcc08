"""Structured logs: one JSON object per line, the station id on OCPP lines, no secrets."""

from __future__ import annotations

import contextvars
import json
import logging

from gateway.logs import STATION_ID, JsonFormatter


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("gateway.ocpp.connection", logging.WARNING, __file__, 1, msg, None, None)


def test_json_line_carries_the_station_of_the_connection() -> None:
    def in_connection() -> str:
        STATION_ID.set("CS-42")
        return JsonFormatter().format(_record("slow reply"))

    line = json.loads(contextvars.copy_context().run(in_connection))
    assert line["station_id"] == "CS-42" and line["msg"] == "slow reply" and line["ts"].endswith("Z")
    assert "station_id" not in json.loads(JsonFormatter().format(_record("outside")))


def test_secrets_are_masked_even_if_someone_logs_them() -> None:
    line = json.loads(JsonFormatter().format(_record("header Authorization: Basic c2VjcmV0 and password=hunter2")))
    assert "c2VjcmV0" not in line["msg"] and "hunter2" not in line["msg"]
