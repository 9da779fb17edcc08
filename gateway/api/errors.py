"""One error shape for every 4xx/5xx the REST API returns::

    {"error": {"code": "not_found", "message": "...", "details": {...}}}

    ApiError                  raised by routes; carries status, stable code, message, details
    ├── NotFound              404 (also what a driver gets for a session that is not theirs)
    ├── Unauthorized          401 (no or unknown bearer token)
    ├── Forbidden             403 (a driver token on an operator endpoint)
    ├── Conflict              409 (e.g. a session that ended, a station id taken, a transactionId
    │                         several stations use: code ambiguous_session)
    └── Unprocessable         422 (a rule a JSON schema cannot express, e.g. departure in the past)

FastAPI's own validation errors and Starlette's 404/405 are rewritten to the same shape so a
client parses one thing; the handlers are installed by :func:`install`.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gateway.db.engine import is_transient
from gateway.ocpp.errors import (
    CallErrorReceived,
    CallFailed,
    CallNotSent,
    CallTimeout,
    ConnectionReplaced,
    StationOffline,
)

log = logging.getLogger(__name__)
DB_RETRY_AFTER_S = 5


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable, machine-readable error code")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorInfo


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None, *, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers
        if code is not None:
            self.code = code


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid bearer token is required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Unprocessable(ApiError):
    status = 422
    code = "validation_error"


class NotStored(ApiError):
    """Applied to the live site, but the database could not keep it: in force now, gone after a
    restart unless sent again."""

    status = 503
    code = "not_stored"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": str(DB_RETRY_AFTER_S)})


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorInfo(code=code, message=message, details=details or {}))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def call_failed_response(exc: CallFailed) -> JSONResponse:
    """A command the station did not carry out: say why, with the status a client can act on."""
    details: dict[str, Any] = {"station_id": exc.station_id, "action": exc.action}
    if isinstance(exc, StationOffline):
        return error_response(409, "station_offline", str(exc), details)
    if isinstance(exc, CallNotSent):
        # Before CallTimeout, its base: the station never got this one (it waited its timeout
        # behind earlier calls), so unlike a timeout nothing may have happened, and sending it
        # again is safe.
        return error_response(504, "call_not_sent", str(exc), {**details, "timeout_s": exc.timeout_s})
    if isinstance(exc, CallTimeout):
        return error_response(504, "station_timeout", str(exc), {**details, "timeout_s": exc.timeout_s})
    if isinstance(exc, CallErrorReceived):
        return error_response(502, "station_error", str(exc), {
            **details, "ocpp_error_code": exc.code, "ocpp_error_description": exc.description})
    if isinstance(exc, ConnectionReplaced):
        return error_response(503, "station_disconnected", str(exc), details)
    return error_response(502, "station_call_failed", str(exc), details)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        # The offending input is left out: it may be a password or a token.
        out.append({"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))})
    return out


def _methods_for(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, APIRoute) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return methods


DATABASE_MODULES = ("sqlalchemy", "asyncpg", "gateway.db")


def database_away(exc: BaseException) -> bool:
    """A failure of the database's connection (is_transient) raised by the database layer; a
    timeout or an OSError of anything else is a bug or another service's, a 500."""
    if not is_transient(exc):
        return False
    return any(frame.f_globals.get("__name__", "").startswith(DATABASE_MODULES)
               for frame, _ in traceback.walk_tb(exc.__traceback__))


def install(api: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_details(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else str(first["msg"])
        if any(e["type"] == "json_invalid" for e in errors):
            # A body that is not JSON at all is a malformed request (400, as the OpenAPI says),
            # not JSON that breaks a rule (422).
            return error_response(400, "bad_request", f"the body is not readable JSON: {message}",
                                  {"errors": errors})
        return error_response(422, "validation_error", message, {"errors": errors})

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                                    "http_error")
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; a path served by
            # several routes (GET and PUT) must list them all (RFC 9110 §15.5.6).
            headers["Allow"] = ", ".join(sorted(_methods_for(request)))
        return error_response(exc.status_code, code, str(exc.detail), None, headers or None)

    async def on_call_failed(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CallFailed)
        return call_failed_response(exc)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        if database_away(exc):
            # The database away or restarting (docs/reliability.md D5): the client's to retry, not a
            # bug of ours.
            log.warning("REST request failed, database unavailable: %s", exc)
            return error_response(503, "database_unavailable", "the database is unavailable: try again shortly",
                                  headers={"Retry-After": str(DB_RETRY_AFTER_S)})
        log.exception("unhandled error in REST request", exc_info=exc)
        return error_response(500, "internal_error", "internal error")

    api.add_exception_handler(ApiError, on_api_error)
    api.add_exception_handler(RequestValidationError, on_validation)
    api.add_exception_handler(StarletteHTTPException, on_http)
    api.add_exception_handler(CallFailed, on_call_failed)
    api.add_exception_handler(Exception, on_unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an operation can return (all the one shape)."""
    text = {400: "The body is not readable JSON", 401: "Missing or unknown bearer token",
            403: "Operator key required", 404: "Not found", 409: "Conflict",
            422: "Invalid request (reason in error.message)",
            502: "The station answered with a CALLERROR (error.details.ocpp_error_code)",
            503: "The station's connection closed during the call, or the database is unavailable "
                 "(error.code; Retry-After)",
            504: "The station did not answer in time, or the call never went out behind the station's "
                 "earlier ones (error.code station_timeout or call_not_sent)"}
    return {s: {"model": ErrorBody, "description": text.get(s, "Error")} for s in statuses}


def database_responses() -> dict[int | str, dict[str, Any]]:
    """The 503 any operation that reads or writes the database can answer (on_unexpected)."""
    return {503: {"model": ErrorBody, "description": "The database is unavailable, or the change was not "
                                                      "stored (error.code database_unavailable or not_stored; "
                                                      "Retry-After)"}}
