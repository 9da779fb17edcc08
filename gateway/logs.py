"""Logging: plain text or one JSON object per line; the station id on every OCPP line.

Passwords, Authorization headers and tokens are never passed to the logger anywhere in the code;
as a second guard the JSON formatter masks any ``Authorization:`` / ``password=`` text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# Set by the OCPP server for each connection; asyncio copies it into every task the connection starts.
STATION_ID: ContextVar[str | None] = ContextVar("station_id", default=None)

_SECRET = re.compile(r"(?i)(authorization:\s*\S+\s+|password=|token=)\S+")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": _SECRET.sub(r"\1***", record.getMessage()),
        }
        station = getattr(record, "station_id", None) or STATION_ID.get()
        if station is not None:
            out["station_id"] = station
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _station_field(record: logging.LogRecord) -> bool:
    station = STATION_ID.get()
    record.station = f" [{station}]" if station else ""
    return True


def log_level_name(level: str) -> str:
    """``level`` as the logging module names it (``debug`` -> ``DEBUG``); ValueError naming the
    levels there are otherwise. Settings check ``--log-level`` with this, so a typo is refused
    when the settings are read, not as a traceback from ``setLevel`` once a command runs."""
    name = level.strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise ValueError(f"unknown log level {level!r} (one of DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return name


def setup_logging(level: str = "INFO", as_json: bool = False) -> None:
    # Checked before the handlers are replaced: a bad level leaves logging as it was.
    level = log_level_name(level)
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(station)s: %(message)s"))
        handler.addFilter(_station_field)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # alembic announces each of its plugins at INFO when it is imported, which the db, station
    # and token commands do after logging is set up.
    for noisy in ("websockets", "uvicorn.access", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A periodic re-plan skipped because the previous one still runs is the coalescing we asked for.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
