"""One live station connection: moves frames between the WebSocket and the pure protocol layer.

The receive loop only parses and dispatches; it never awaits a handler. The station's CALLs
are answered by a drain task (started when a CALL arrives, gone when the queue is empty, so an
idle station costs no task), one after another in arrival order. A slow handler therefore
delays neither other stations nor the CALLRESULTs this station sends to our own CALLs.

Our CALLs to the station go through :meth:`Connection.call`: one in flight, the rest queued in
order (OCPP-J Part 4 §4.1.1). The timeout covers the whole wait, queue included, so a caller
always hears back within ``timeout_s``; it is a real-time transport timeout (``asyncio.timeout``),
not simulated time, because it bounds a network round trip.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.ocpp import protocol as p
from gateway.ocpp.errors import (
    CallErrorReceived,
    CallNotSent,
    CallTimeout,
    ConnectionReplaced,
    NoReply,
    OcppError,
)
from gateway.ocpp.ports import MessageHandler, StationContext
from gateway.ocpp.validation import SchemaSet

log = logging.getLogger("gateway.ocpp.connection")


class Connection:
    """The live link to one station; owned by the server, used by :mod:`commands` via ``call``."""

    def __init__(
        self,
        ws: ServerConnection,
        ctx: StationContext,
        handler: MessageHandler,
        schemas: SchemaSet,
        *,
        call_timeout_s: float,
    ) -> None:
        self.ws = ws
        self.ctx = ctx
        self._handler = handler
        self._schemas = schemas
        self._call_timeout_s = call_timeout_s
        self._outgoing = p.OutgoingCalls()
        self._incoming = p.IncomingCalls()
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Each waiting call's timeout and its length, moved on when its frame goes out (call).
        self._deadlines: dict[str, tuple[asyncio.Timeout, float]] = {}
        self._drain_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_reason: str | None = None

    @property
    def station_id(self) -> str:
        return self.ctx.station_id

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    # --- receiving -------------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the socket closes; then fail every pending CALL of ours."""
        try:
            async for frame in self.ws:
                await self._on_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            self._shut("connection closed")

    async def _on_frame(self, frame: str | bytes) -> None:
        parsed = p.parse_binary() if isinstance(frame, bytes) else p.parse_frame(frame)
        if isinstance(parsed, p.Call):
            if self._incoming.full and parsed.message_id not in self._incoming.active:
                # Part 4 §4.1.1: one CALL at a time. Answered at once, so the station learns it
                # and the gateway holds nothing for it; the socket lives.
                log.warning("%s: %d CALLs already waiting; %s %s refused", self.station_id,
                            len(self._incoming.queue), parsed.action, parsed.message_id)
                await self.ws.send(p.build_call_error(
                    parsed.message_id, "GenericError",
                    f"{p.INCOMING_QUEUED_MAX} CALLs already wait for an answer: send one at a time"))
            elif not self._incoming.receive(parsed):
                log.info("%s: duplicate message id %s still in progress; dropped",
                         self.station_id, parsed.message_id)
            elif self._drain_task is None:
                self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        elif isinstance(parsed, p.CallResult | p.CallError):
            self._on_reply(parsed)
        elif isinstance(parsed, p.FrameError):
            log.info("%s: malformed frame -> %s (%s)", self.station_id, parsed.code, parsed.description)
            await self.ws.send(parsed.reply())
        else:
            log.info("%s: ignored frame: %s", self.station_id, parsed.reason)
            if parsed.message_id is not None:
                # A reply to our call in the wrong shape is the station's answer all the same:
                # failed now, not left to time out (the scheduler would take the station for a
                # hung one). Never answered back (Part 4: a response gets no response).
                self._on_reply(p.CallError(parsed.message_id, "FormatViolation",
                                           f"malformed reply: {parsed.reason}", {}))

    def _on_reply(self, reply: p.CallResult | p.CallError) -> None:
        call = self._outgoing.reply_for(reply.message_id)
        if call is None:
            # A late reply to a call that timed out, or an id we never used (Part 4 §4.1.4).
            log.info("%s: reply to unknown or expired message id %s", self.station_id, reply.message_id)
            return
        waiter = self._waiters.pop(call.message_id, None)
        if waiter is not None and not waiter.done():
            if isinstance(reply, p.CallResult):
                waiter.set_result(reply.payload)
            else:
                waiter.set_exception(CallErrorReceived(
                    self.station_id, call.action, reply.code, reply.description, reply.details))
        self._pump()

    async def _drain(self) -> None:
        try:
            while (call := self._incoming.next()) is not None:
                try:
                    reply = await self._answer(call)
                    if reply is not None:
                        await self.ws.send(reply)
                except ConnectionClosed:
                    return
                finally:
                    self._incoming.done(call)
        finally:
            self._drain_task = None

    async def _answer(self, call: p.Call) -> str | None:
        try:
            self._schemas.check_station_call(call.action, call.payload)
            result = await self._handler(self.ctx, call.action, call.payload)
        except NoReply as exc:
            log.info("%s: %s %s not answered: %s", self.station_id, call.action, call.message_id, exc)
            return None
        except OcppError as exc:
            try:
                return p.build_call_error(call.message_id, exc.code, exc.description, exc.details)
            except (TypeError, ValueError):
                # Details or description that JSON/UTF-8 cannot carry: the code alone still tells
                # the station what was wrong, and the socket must never see unsendable text.
                return p.build_call_error(call.message_id, exc.code)
        except Exception:
            log.exception("%s: handler for %s failed", self.station_id, call.action)
            return p.build_call_error(call.message_id, "InternalError", "the CSMS could not process it")
        try:
            self._schemas.check(call.action, result, request=False)
            return p.build_call_result(call.message_id, result)
        except (OcppError, TypeError, ValueError) as exc:
            # Our own handler built an invalid reply: a bug on our side, never the station's.
            log.error("%s: handler for %s returned an invalid response: %s",
                      self.station_id, call.action, exc)
            return p.build_call_error(call.message_id, "InternalError", "the CSMS built an invalid response")

    # --- sending ---------------------------------------------------------------------------

    async def call(
        self, action: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send a CALL and return the CALLRESULT payload.

        Raises CallTimeout, CallErrorReceived (also when the station's CALLRESULT violates the
        schema: code is then the violation, description starts with "invalid CALLRESULT"),
        ConnectionReplaced (socket closed while waiting). An invalid *request* payload is a bug
        of the caller and raises the OcppError from validation before anything is sent.
        """
        if self._closed_reason is not None:
            raise ConnectionReplaced(self.station_id, action, self._closed_reason)
        self._schemas.check(action, payload, request=True)
        timeout = self._call_timeout_s if timeout_s is None else timeout_s
        call = self._outgoing.submit(action, payload)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[call.message_id] = waiter
        try:
            # The timeout is the station's time to answer, counted again from when the frame goes
            # out (_send_call): a call queued behind others (one in flight at a time) for part of
            # it is not one the station left unanswered. The wait for its turn has the same bound.
            async with asyncio.timeout(timeout) as deadline:
                self._deadlines[call.message_id] = (deadline, timeout)
                self._pump()
                result = await waiter
        except TimeoutError:
            if not call.sent:
                raise CallNotSent(self.station_id, action, timeout) from None
            raise CallTimeout(self.station_id, action, timeout) from None
        finally:
            self._deadlines.pop(call.message_id, None)
            if not waiter.done() or waiter.cancelled():
                self._waiters.pop(call.message_id, None)
                self._outgoing.abandon(call)
                self._pump()
        try:
            self._schemas.check(action, result, request=False)
        except OcppError as exc:
            raise CallErrorReceived(self.station_id, action, exc.code,
                                    f"invalid CALLRESULT: {exc.description}", exc.details) from None
        return result

    def _pump(self) -> None:
        """Send the next queued CALL if the slot is free."""
        if self._closed_reason is not None:
            return
        nxt = self._outgoing.next_to_send()
        if nxt is not None:
            self._spawn(self._send_call(nxt))

    async def _send_call(self, call: p.OutgoingCall) -> None:
        if self._outgoing.in_flight is not call:
            # Abandoned (its caller cancelled) before this task ran: sent now it would be a second
            # CALL in flight beside the next one (OCPP-J Part 4 §4.1.1), acted on unawaited.
            return
        try:
            await self.ws.send(call.frame())
        except ConnectionClosed:
            self._shut("connection closed")
            return
        call.sent = True
        deadline = self._deadlines.get(call.message_id)
        if deadline is not None and not deadline[0].expired():
            deadline[0].reschedule(asyncio.get_running_loop().time() + deadline[1])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- closing ---------------------------------------------------------------------------

    def _shut(self, reason: str) -> None:
        """Fail every pending and queued CALL at once; later calls fail fast too."""
        if self._closed_reason is None:
            self._closed_reason = reason
        self.ctx.closed.set()
        self._incoming.queue.clear()  # not yet started: the station retries them elsewhere
        for call in self._outgoing.close():
            waiter = self._waiters.pop(call.message_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionReplaced(self.station_id, call.action, self._closed_reason))

    def replace(self, reason: str = "replaced by a newer connection") -> None:
        """A newer connection took over: fail pending calls now, close the socket in the background."""
        self._shut(reason)
        self._spawn(self.close(1000, reason))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._shut(reason or "connection closed")
        await self.ws.close(code, reason)

    async def wait_handlers(self) -> None:
        """Wait for the CALL being handled (if any) to finish."""
        task = self._drain_task
        if task is not None:
            await asyncio.shield(task)
