"""One request of an ASGI application: ``receive``/``send``, run in the request's own task.

The app runs in the task the server made for the request, as a native handler
does, and its ``send()`` writes through the exchange (``Exchange.push_*``):

- A body sent whole (``more_body=False`` in its first body message) goes out at
  once as a fixed response with ``Content-Length``: its head and body in one write.
- Otherwise the head goes out with the first body chunk, or ``first_item_wait``
  after ``http.response.start`` if the first chunk is slow, and each chunk is
  written when it is sent. A ``send()`` returns once the client may take more:
  while the client reads slowly the app waits in ``send()``, so the server holds
  at most the write high-water mark plus one chunk. Small chunks (SSE events,
  tokens) sent in one loop iteration leave in one write (``_writer.HOLD_LIMIT``).
- The response may end before the app returns (Starlette runs background tasks
  after its last ``send()``): the connection goes on to its next request while
  the app's task runs on, known to the adapter so that shutdown can cancel it.

When the client leaves, the exchange cancels the task (the app's ``await`` raises
``CancelledError``); ``receive()`` answers ``http.disconnect`` and every later
``send()`` raises :class:`~tinystream.ClientDisconnected` (an OSError, ASGI HTTP
spec 2.4). Whatever the app raises because of that is not logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn

from ._asgi_errors import (
    ASGIProtocolError,
    caused_by_disconnect,
    exception_chain,
    release_frames,
)
from ._asgi_head import parse_start
from ._context import Outcome
from ._exchange import Exchange
from .errors import ClientDisconnected, HTTPError
from .request import Request
from .responses import NO_BODY_STATUSES, Response

__all__ = ["Cycle", "Message", "Scope"]

logger = logging.getLogger("tinystream.error")

Scope = dict[str, Any]
Message = Mapping[str, Any]
#: An ASGI 3 application: ``await app(scope, receive, send)``.
App = Callable[..., Any]

_DISCONNECT = {"type": "http.disconnect"}
_PLAIN_TEXT = (b"content-type", b"text/plain; charset=utf-8")


class Cycle:
    """One request of an ASGI app: the app's call, ``receive`` and ``send``."""

    __slots__ = (
        "app",
        "body_ended",
        "body_open",
        "closed",
        "content_length",
        "cycles",
        "discard",
        "done",
        "event_stream",
        "exchange",
        "head_timer",
        "headers",
        "loop",
        "receiver",
        "reported",
        "request",
        "request_body",
        "scope",
        "sent",
        "shutting_down",
        "status",
        "streaming",
        "task",
        "tasks",
        "told_disconnect",
    )

    def __init__(
        self,
        app: App,
        scope: Scope,
        request: Request,
        exchange: Exchange,
        *,
        shutting_down: bool,
        tasks: set[asyncio.Task[Any]],
        cycles: set[Cycle],
    ) -> None:
        self.app = app
        self.scope = scope
        self.request = request
        self.exchange = exchange
        exchange.pusher = self  # told when the client leaves
        self.tasks = tasks  # the adapter's app tasks that outlive their response
        self.cycles = cycles  # the adapter's open cycles (shutdown tells them)
        self.loop = exchange.ctx.loop
        self.task = exchange.task  # the app runs in the exchange's task
        # The body's stream is made on the first receive(): most apps never call it.
        self.request_body: AsyncIterator[bytes] | None = None
        self.body_open = True  # receive() has not returned more_body=False yet
        self.status = 0  # set by http.response.start
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.event_stream = False
        # HEAD, 204 and 304 responses have no body: the app's is dropped.
        self.discard = request.method == "HEAD"
        self.head_timer: asyncio.TimerHandle | None = None  # the head of a slow body
        self.streaming = False  # a head went out; the body is being written
        self.sent = 0  # body bytes the app sent
        self.body_ended = False  # the app sent more_body=False
        self.done = False  # the response is complete
        self.receiver: asyncio.Future[None] | None = None  # receive() waits for a disconnect
        self.reported: BaseException | None = None  # logged already (a violation)
        self.closed: str | None = None  # why every later send() raises
        self.told_disconnect = False
        self.shutting_down = shutting_down

    # The app's call

    async def run(self) -> Response | None:
        """Run the app; a response for the exchange to send if none was pushed.

        Raises:
            Exception: what the app raised before any response went out (the
                exchange answers 500), or while a pushed body was open (it is
                truncated and logged); ``ASGIProtocolError`` if the app returned
                without a complete response.
        """
        try:
            await self.app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._cancel_head_timer()
            return self._app_failed(exc)
        self._cancel_head_timer()
        return self._app_returned()

    def _app_returned(self) -> Response | None:
        if self.done or self.closed is not None:
            return None  # pushed (or cut off): nothing left to send
        if self.streaming:
            self._close("the application returned")
            if self.told_disconnect:
                # Told to stop (shutdown) and it did: no bug, the body just ends here.
                self.exchange.push_truncate(Outcome.SHUTDOWN)
                return None
            raise ASGIProtocolError("ASGI application returned without completing its response")
        if self.discard:
            self._push_head()  # HEAD, 204, 304: no body message needed
            return None
        self._close("the application returned without a response")
        if self.status == 0 and self.told_disconnect:
            return Response("Service Unavailable\n", status=503)  # (sent by the exchange)
        if self.status == 0:
            raise ASGIProtocolError("ASGI application returned without starting a response")
        raise ASGIProtocolError("ASGI application returned without completing its response")

    def _app_failed(self, exc: BaseException) -> Response | None:
        if isinstance(exc, asyncio.CancelledError):
            # The client left or the server stopped: whoever cancelled us knows. The
            # app's generator, parked at ``yield`` while the framework waited in
            # send(), is freed (and finalised) once the traceback lets go of it.
            self._close("the client disconnected")
            release_frames(exc)
            raise exc
        closed_by_us = self.closed is not None and caused_by_disconnect(exc)
        if closed_by_us or self._reported_in(exc):
            release_frames(exc)
            if not self.done:
                self.exchange.push_truncate(Outcome.CLIENT_GONE)  # (it left: nothing is written)
            return None
        if self.done:
            logger.error(
                "ASGI application failed after its response for %s %s",
                self.request.method,
                self.request.target,
                exc_info=exc,
            )
            return None
        self._close("the application failed")
        raise exc  # before a head: a 500; with an open body: logged and truncated

    def _reported_in(self, exc: BaseException) -> bool:
        reported = self.reported
        return reported is not None and any(e is reported for e in exception_chain(exc))

    # The ASGI interface

    async def receive(self) -> dict[str, Any]:
        if self.body_open:
            if self.request_body is None:
                self.request_body = self.request.stream()
            try:
                chunk = await self.request_body.__anext__()
            except StopAsyncIteration:
                self.body_open, self.request_body = False, None
                return {"type": "http.request", "body": b"", "more_body": False}
            except HTTPError as exc:  # 413: the body is larger than max_body_size
                self.body_open, self.request_body = False, None
                self._refuse(exc)
            except ClientDisconnected:
                self.body_open, self.request_body = False, None
            else:
                return {"type": "http.request", "body": chunk, "more_body": True}
        elif self.closed is None and not self.done and not self.shutting_down:
            self.receiver = self.loop.create_future()
            try:
                await self.receiver
            finally:
                self.receiver = None
        self.told_disconnect = True
        return _DISCONNECT.copy()

    def _refuse(self, exc: HTTPError) -> None:
        """The request body was refused: a 413 if no head went out, else a truncation."""
        if self.done or self.closed is not None:
            return
        self._cancel_head_timer()
        if self.streaming:
            self.exchange.push_truncate(Outcome.ERROR)
        else:
            self._complete()
            self.exchange.push_whole(exc.status, [_PLAIN_TEXT], f"{exc.detail}\n".encode())
        self._close("the request was refused")

    async def send(self, message: Message) -> None:
        if self.closed is not None:
            raise ClientDisconnected(self.closed)
        kind = message["type"]
        if kind == "http.response.body":
            await self._send_body(message)
        elif kind == "http.response.start":
            self._start(message)
        else:
            self._violation(f"unknown or unsupported ASGI message type {kind!r}")

    def _start(self, message: Message) -> None:
        if self.status:
            self._violation("ASGI application sent http.response.start twice")
        try:
            head = parse_start(message)
        except ASGIProtocolError as exc:
            self._violation(str(exc))
        self.status = head.status
        self.headers = head.headers
        self.content_length = head.content_length
        self.event_stream = head.event_stream
        if head.status in NO_BODY_STATUSES:
            self.discard = True
        # Like a native stream's head, this one waits (briefly) for the first body
        # chunk: a whole body then goes with it, a failure before it is a real 500.
        # A declared Content-Length announces a fixed body: its head waits for it.
        wait = self.exchange.ctx.config.first_item_wait
        if wait <= 0:
            self._push_head()
        elif wait != float("inf") and head.content_length is None:
            self.head_timer = self.loop.call_later(wait, self._head_due)

    async def _send_body(self, message: Message) -> None:
        if not self.status:
            self._violation("ASGI application sent http.response.body before http.response.start")
        if self.body_ended:
            self._violation("ASGI application sent http.response.body after more_body=False")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if type(body) is not bytes:
            if not isinstance(body, (bytearray, memoryview)):
                self._violation(f"ASGI body must be bytes, got {type(body).__name__}")
            body = bytes(body)  # a copy: the app may reuse its buffer
        if self.discard:
            self.body_ended = not more
            if not self.done:
                self._push_head()  # no body will follow it
            if more:  # (an endless body for a HEAD request: stop it)
                self._close("the response is complete (it has no body)")
                raise ClientDisconnected(self.closed)
            return
        if body:
            self.sent += len(body)
            if self.content_length is not None and self.sent > self.content_length:
                self._violation(
                    f"ASGI application sent more than its Content-Length {self.content_length}"
                )
        if not more:
            if self.content_length is not None and self.sent != self.content_length:
                self._violation(
                    f"ASGI application sent {self.sent} body bytes with "
                    f"Content-Length {self.content_length}"
                )
            self.body_ended = True
            if not self.streaming:  # the whole body at once: a fixed response
                self._cancel_head_timer()
                self._complete()
                self.exchange.push_whole(self.status, self.headers, body)
                return
        if not self.streaming:
            self._push_head()
            if self.closed is not None:
                raise ClientDisconnected(self.closed)
        if body:
            try:
                await self.exchange.push_body(body)
            except ClientDisconnected:
                self._close("the client disconnected")
                raise
        elif more:
            await asyncio.sleep(0)  # nothing to write: still never spin the loop
        if not more:
            self._complete()
            self.exchange.push_end()

    def _violation(self, message: str) -> NoReturn:
        """The app broke the protocol: one error line, and a 500 or a truncation.

        Decided here, not when the error leaves the app: the app may swallow it.
        """
        error = ASGIProtocolError(message)
        if self.reported is None and self.closed is None:
            self.reported = error
            logger.error("%s (%s %s)", message, self.request.method, self.request.target)
            self._cancel_head_timer()
            if self.streaming:
                self.exchange.push_truncate(Outcome.ERROR)
            elif not self.done:
                self.exchange.note(Outcome.ERROR)
                self._complete()
                self.exchange.push_whole(500, [_PLAIN_TEXT], b"Internal Server Error\n")
            self._close("the application broke the ASGI protocol")
        raise error

    # Heads, the end, and being told to stop

    def _head_due(self) -> None:
        """``first_item_wait`` passed without a body: the head goes alone."""
        self.head_timer = None
        if not self.streaming and not self.done and self.closed is None:
            self._push_head()

    def _push_head(self) -> None:
        self._cancel_head_timer()
        if self.exchange.push_head(self.status, self.headers, self.content_length):
            self.streaming = True
            if self.shutting_down and self.event_stream:
                self._end_for_shutdown()
        elif self.request.is_disconnected():
            self._close("the client disconnected")
        else:
            self._complete()  # HEAD, 204, 304: the head is the whole response

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _complete(self) -> None:
        """The response is whole; the app may still run (background work)."""
        self.done = True
        self.streaming = False
        _resolve(self.receiver)  # a disconnect listener hears it now, as from uvicorn
        self.cycles.discard(self)
        if self.task is not None:
            self.tasks.add(self.task)  # until the app returns (the adapter discards it)

    def _close(self, reason: str) -> None:
        """No more of this response will be sent: fail every later send()."""
        if self.closed is None:
            self.closed = reason
            _resolve(self.receiver)
            self.cycles.discard(self)

    def _end_for_shutdown(self) -> None:
        # A clean end (browsers reconnect), then the app is stopped.
        self._complete()
        self._close("shutdown")
        self.exchange.push_end(Outcome.SHUTDOWN)
        if self.task is not None:
            self.task.cancel()

    def client_gone(self) -> None:
        """The client left (the exchange cancels the app's task)."""
        self._cancel_head_timer()
        self._close("the client disconnected")

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        _resolve(self.receiver)
        if self.event_stream and self.streaming and self.closed is None:
            self._end_for_shutdown()


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
