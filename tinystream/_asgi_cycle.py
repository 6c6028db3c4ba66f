"""One request of an ASGI application: its task, ``receive``/``send``, and the body hand-off.

Body chunks pass from the app's ``send()`` to the response's producer (the cycle
itself) through a hand-off with one slot: a ``send()`` returns once the server
has *pulled* its chunk (small chunks may share the slot up to ``SLOT_BYTES``).
The core pulls only while the transport is not paused, so the app is paused
when the client reads slowly, and at most one chunk (or ``SLOT_BYTES`` of small
ones) waits beyond the transport's high-water mark. A ``send()`` that finds the
slot full suspends, so an app whose generator never awaits still yields to the loop.

When the core closes the producer before the body ended, :meth:`Cycle.close`
cancels the app task, answers ``receive()`` with ``http.disconnect`` and fails
every later ``send()`` with :class:`~tinystream.ClientDisconnected` (an OSError,
ASGI HTTP spec 2.4). Whatever the app raises because of that is not logged.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, NoReturn, cast

from ._asgi_errors import ASGIProtocolError, caused_by_disconnect, release_frames
from ._asgi_head import parse_start
from .errors import ClientDisconnected, HTTPError
from .request import Request
from .responses import NO_BODY_STATUSES, Response, StreamingResponse

__all__ = ["Cycle", "Message", "Scope"]

logger = logging.getLogger("tinystream.error")

Scope = dict[str, Any]
Message = Mapping[str, Any]
#: An ASGI 3 application: ``await app(scope, receive, send)``.
App = Callable[..., Any]

_DISCONNECT = {"type": "http.disconnect"}
#: Small chunks (SSE events, tokens) may share the hand-off slot up to this many
#: bytes before a send() waits for the pull: the next pull writes them in one go
#: (one syscall, one loop iteration, instead of one per event). A chunk this size
#: or larger always waits alone, so a paused transport holds back at most this
#: much, or one chunk, beyond its high-water mark.
SLOT_BYTES = 16 * 1024  # bytes


class Cycle:
    """One request of an ASGI app: its task, ``receive``/``send``, and the response body.

    The cycle is also the response's producer (``__aiter__``/``__anext__``/``aclose``).
    """

    __slots__ = (
        "app",
        "body_ended",
        "body_open",
        "chunks",
        "closed",
        "consumer",
        "content_length",
        "cycles",
        "discard",
        "done",
        "ended_by_shutdown",
        "event_stream",
        "failure",
        "head_returned",
        "headers",
        "loop",
        "queued",
        "receiver",
        "refusal",
        "reported",
        "request",
        "request_body",
        "scope",
        "sender",
        "sent",
        "shutting_down",
        "status",
        "task",
        "tasks",
        "told_disconnect",
        "wake",
    )

    def __init__(
        self,
        app: App,
        scope: Scope,
        request: Request,
        *,
        shutting_down: bool,
        tasks: set[asyncio.Task[None]],
        cycles: set[Cycle],
    ) -> None:
        self.app = app
        self.scope = scope
        self.tasks = tasks  # the adapter's app tasks, kept referenced until they end
        self.cycles = cycles  # the adapter's open cycles (shutdown tells them)
        self.request = request
        self.loop = asyncio.get_running_loop()
        # The body's stream is made on the first receive(): most apps never call it.
        self.request_body: AsyncIterator[bytes] | None = None
        self.body_open = True  # receive() has not returned more_body=False yet
        self.task: asyncio.Task[None] | None = None
        self.wake: asyncio.Future[None] | None = None  # the handler waits for the head
        self.status = 0  # set by http.response.start
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.event_stream = False
        # HEAD, 204 and 304 responses have no body: the app's is dropped.
        self.discard = request.method == "HEAD"
        self.head_returned = False
        # Sent by the app, not pulled yet. A list, not a deque: an idle stream's
        # empty deque holds a 64-slot block (~0.6 KiB), an empty list 56 bytes.
        self.chunks: list[bytes] = []
        self.sent = 0  # body bytes the app sent
        self.queued = 0  # bytes in ``chunks``
        self.body_ended = False  # the app sent more_body=False
        self.consumer: asyncio.Future[None] | None = None  # the producer waits for a chunk
        self.sender: asyncio.Future[None] | None = None  # the app waits for its chunk's pull
        self.receiver: asyncio.Future[None] | None = None  # the app waits for a disconnect
        self.failure: BaseException | None = None  # ends the response (and is logged)
        self.refusal: HTTPError | None = None  # the request body was refused (413)
        self.reported = False  # the failure went to the core, which logs it
        self.closed: str | None = None  # why every later send() raises
        self.done = False  # the response has been handed over whole, or closed
        self.told_disconnect = False
        #: The server's shutdown ended this event stream (read by the exchange).
        self.ended_by_shutdown = False
        self.shutting_down = shutting_down

    # The handler

    async def respond(self) -> Response | StreamingResponse:
        self._start_app()
        try:
            if not self._head_decided():
                await self._wait_wake()  # until http.response.start (or the app's end)
            if self.status in NO_BODY_STATUSES and not self.body_ended and self.failure is None:
                await self._wait_wake()  # the (empty) body must end before a fixed response
        except BaseException:
            # Cancelled: the client left (or the server stopped) before the head.
            self.close("the client disconnected")
            raise
        return self._response()

    def _start_app(self) -> None:
        app = cast("Coroutine[Any, Any, None]", self.app(self.scope, self.receive, self.send))
        if sys.version_info >= (3, 12):
            # The app's first step runs now, in its own task (so current_task(),
            # anyio's cancel scopes and contextvars are as they will stay): an app
            # that answers without waiting (a JSONResponse) is done before we look,
            # so the handler does not suspend and the request costs no extra loop
            # iteration. Earlier Pythons run that step on the next iteration.
            task = asyncio.Task(app, loop=self.loop, eager_start=True)
        else:
            task = self.loop.create_task(app)
        self.task = task
        if task.done():
            self._app_done(task)  # it answered (or failed) without waiting
        else:
            self.tasks.add(task)  # referenced until it ends (_app_done discards it)
            task.add_done_callback(self._app_done)

    def _head_decided(self) -> bool:
        # A start was sent, or the answer is an error (or 503): _response() knows.
        if self.status or self.failure is not None or self.refusal is not None:
            return True
        return self.task is not None and self.task.done()

    async def _wait_wake(self) -> None:
        self.wake = wake = self.loop.create_future()
        try:
            await wake
        finally:
            self.wake = None

    def _response(self) -> Response | StreamingResponse:
        if self.refusal is not None:
            self.close("the request was refused")
            raise self.refusal
        if self.failure is not None and not self.body_ended:
            # Before any byte went out: the core logs it and answers 500.
            self.close("the application failed")
            self.reported = True
            raise self.failure
        if self.status == 0:
            self.close("the application returned without a response")
            if self.told_disconnect:
                return Response("Service Unavailable\n", status=503)
            raise ASGIProtocolError("ASGI application returned without starting a response")
        self.head_returned = True
        if self.status in NO_BODY_STATUSES or (self.body_ended and not self.discard):
            # The response is whole: a receive() waiting (a disconnect listener)
            # gets http.disconnect now, as from uvicorn, instead of waiting forever.
            self.done = True
            _resolve(self.receiver)
        if self.status in NO_BODY_STATUSES:
            response = Response(b"", self.status)
            response.headers = self.headers
            return response
        if self.body_ended and not self.discard:
            body = b"".join(self.chunks)
            self.chunks.clear()
            if self.content_length is not None and self.content_length != len(body):
                raise ASGIProtocolError(
                    f"ASGI application sent {len(body)} body bytes with "
                    f"Content-Length {self.content_length}"
                )
            response = Response(body, self.status)
            response.headers = self.headers
            return response
        # A StreamingResponse checks its own status; ours was validated in send().
        stream = StreamingResponse(self, self.status)
        stream.headers = self.headers
        stream.content_length = self.content_length
        return stream

    def _wake_handler(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _app_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            exc = None
            if self.closed is not None:
                release_frames(task)
        else:
            exc = task.exception()
        if not self.head_returned:
            if exc is not None and self.failure is None:
                self.failure = exc
            self._wake_handler()  # it answers (500 for an exception)
            return
        if self.closed is None and not self.body_ended and not self.discard:
            # Streaming: the producer reports how the app ended (it raises).
            if exc is not None and self.failure is None:
                self.failure = exc
            _resolve(self.consumer)
            return
        if exc is None or (exc is self.failure and self.reported):
            return
        if caused_by_disconnect(exc):
            release_frames(task)
            return
        logger.error(
            "ASGI application failed after its response for %s %s",
            self.request.method,
            self.request.target,
            exc_info=exc,
        )

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
                if self.head_returned:
                    self.failure = exc  # too late for a status: the response is cut
                    _resolve(self.consumer)
                else:
                    self.refusal = exc
                    self._wake_handler()
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
        self._wake_handler()

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
            if not more:
                self.body_ended = True
                self._wake_handler()
            else:
                await asyncio.sleep(0)  # nothing goes out: still never spin the loop
            return
        if body:
            self.sent += len(body)
            if self.content_length is not None and self.sent > self.content_length:
                self._violation(
                    f"ASGI application sent more than its Content-Length {self.content_length}"
                )
            self.chunks.append(body)
            self.queued += len(body)
        if not more:
            if self.content_length is not None and self.sent != self.content_length:
                self._violation(
                    f"ASGI application sent {self.sent} body bytes with "
                    f"Content-Length {self.content_length}"
                )
            self.body_ended = True
        consumer = self.consumer
        if consumer is not None and not consumer.done():
            consumer.set_result(None)  # the server asked for it: pulled
            return
        if not more and not self.head_returned:
            return  # a whole body before the head: a fixed response
        if not body:
            if more:
                await asyncio.sleep(0)
            return
        if self.queued <= SLOT_BYTES:
            return  # small chunks share the slot; the next pull takes them as one
        self.sender = sender = self.loop.create_future()
        await sender  # until the producer pulls it (or the response is closed)

    def _violation(self, message: str) -> NoReturn:
        error = ASGIProtocolError(message)
        if self.failure is None:
            self.failure = error
            if self.body_ended:
                # The response went out whole; nobody else will report this.
                self.reported = True
                logger.error("%s (%s %s)", message, self.request.method, self.request.target)
        self._wake_handler()
        _resolve(self.consumer)
        raise error

    # The producer of a streamed body (the core pulls only while it can write)

    def __aiter__(self) -> Cycle:
        return self

    async def __anext__(self) -> bytes:
        chunks = self.chunks
        while True:
            if chunks:
                # Everything in the slot, as one write (many small events, or one chunk).
                chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.queued = 0
                _resolve(self.sender)
                return chunk
            if self.body_ended:
                raise StopAsyncIteration  # (a violation after the end was logged)
            if self.failure is not None:
                self.reported = True
                raise self.failure  # logged by the core; the body is truncated
            if self.shutting_down and self.event_stream:
                self.ended_by_shutdown = True  # the access log says "shutdown"
                raise StopAsyncIteration  # a clean end: the browser reconnects
            task = self.task
            if task is not None and task.done() and not self.told_disconnect:
                self.failure = ASGIProtocolError(
                    "ASGI application returned without completing its response"
                )
                continue
            # (An app that returned early because it was told "disconnect" at
            # shutdown is no bug: its body is cut when the grace period ends.)
            self.consumer = consumer = self.loop.create_future()
            try:
                await consumer
            finally:
                self.consumer = None

    async def aclose(self) -> None:
        """The core is done with the body: complete, or cut short (then the app stops)."""
        self.cycles.discard(self)
        self.done = True
        _resolve(self.receiver)
        if not self.body_ended:
            self.close("the client disconnected" if not self.shutting_down else "shutdown")

    def close(self, reason: str) -> None:
        """No more of this response will be sent: stop the app, fail its sends."""
        if self.closed is not None:
            return
        self.closed = reason
        _resolve(self.receiver)
        sender = self.sender
        if sender is not None and not sender.done():
            sender.set_exception(ClientDisconnected(reason))
        task = self.task
        if task is not None and not task.done() and not self.body_ended:
            task.cancel()

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        _resolve(self.receiver)
        if self.event_stream:
            _resolve(self.consumer)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
