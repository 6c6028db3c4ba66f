"""One request and its response: the request, its body, the handler, the hand-off.

The connection (:mod:`tinystream.server`) creates an :class:`Exchange` for each
request h11 parses. The exchange builds the :class:`~tinystream.request.Request`,
feeds it the body (with flow control and ``100 Continue``), runs the handler in a
task under one error policy, and hands what the handler returns to the
connection's :class:`~tinystream._writer.ResponseWriter`, which writes every byte.

It talks to its connection through :class:`ConnectionPort` alone, and ends
exactly once (:meth:`Exchange._end`): the first :class:`Outcome` noted wins, the
access-log line is written, and the connection is told.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, Protocol

import h11

from ._compress import compress_stream, compress_whole
from ._context import Outcome, ServerContext
from ._eventstream import LiveEventStream
from ._flow import FlowControl, ReadPause
from ._producers import NOTHING, close_source, open_source, pull_first
from ._writer import ResponseWriter, SendfileStalled
from .errors import ClientDisconnected, HTTPError
from .files import FileResponse
from .request import BodyReader, Disconnect, Request
from .responses import Response, StreamingResponse
from .streams import EventSourceResponse

__all__ = ["ConnectionPort", "Exchange"]

logger = logging.getLogger("tinystream.error")

#: ``asyncio.Task(..., eager_start=True)`` (3.12+) runs the first step at once.
EAGER_START = sys.version_info >= (3, 12)


class ConnectionPort(Protocol):
    """What an exchange may ask of its connection."""

    def must_close(self) -> None:
        """Do not reuse the connection after this response."""

    def exchange_finished(self, exchange: Exchange) -> None:
        """The exchange ended (it was counted and logged): take the connection back."""


class Exchange:
    """One request and its response: runs the handler and hands its response to the writer."""

    __slots__ = (
        "_ended",
        "_running",
        "body",
        "body_received",
        "client",
        "ctx",
        "disconnected",
        "event_stream",
        "flow",
        "outcome",
        "port",
        "request",
        "task",
        "time_start",
        "writer",
    )

    def __init__(
        self,
        port: ConnectionPort,
        ctx: ServerContext,
        writer: ResponseWriter,
        flow: FlowControl,
        client: tuple[str, int] | None,
        event: h11.Request,
        method: str,
        path: str,
        query: str,
    ) -> None:
        self.port = port
        self.ctx = ctx
        self.writer = writer
        self.flow = flow
        self.client = client
        self.time_start = time.perf_counter()
        self.body = BodyReader(self)
        self.body_received = 0
        self.disconnected = Disconnect()
        self.request = Request(
            method,
            event.target.decode("ascii"),
            raw_headers=event.headers,
            http_version=event.http_version.decode("ascii"),
            client=client,
            body=self.body,
            disconnected=self.disconnected,
            shutting_down=ctx.shutting_down,
            split_target=(path, query),
        )
        self.outcome: Outcome | None = None
        self.task: asyncio.Task[None] | None = None
        self.event_stream: LiveEventStream | None = None
        self._ended = False
        self._running = False
        writer.begin(head_only=method == "HEAD")

    def start(self) -> None:
        """Run the handler in a task, kept referenced until it ends (``run`` ends it).

        Started eagerly on 3.12+: a handler that never suspends is answered before
        this returns, yet in a real task (``current_task()``, ``asyncio.timeout()``).
        """
        ctx = self.ctx
        if EAGER_START:
            task = asyncio.Task(self.run(), loop=ctx.loop, eager_start=True)  # type: ignore[call-arg]
        else:
            task = ctx.loop.create_task(self.run())
        if task.done():
            return  # answered already
        self.task = task
        ctx.tasks.add(task)  # run() discards it

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.ctx.tasks.discard(task)
        self._end()

    def note(self, outcome: Outcome) -> None:
        """How the response ended; the first outcome noted is the one logged."""
        if self.outcome is None:
            self.outcome = outcome

    # What the connection tells us

    def receive_body(self, data: bytes) -> bool:
        """Pass body bytes to the handler; False when the body is refused as too large."""
        self.body_received += len(data)
        limit = self.ctx.config.max_body_size
        if limit is not None and self.body_received > limit:
            self.body.fail(HTTPError(413, f"request body larger than {limit} bytes"))
            self.flow.pause_reading(ReadPause.BODY)
            self.port.must_close()
            return False
        self.body.feed(data)
        return True

    def end_of_body(self) -> None:
        self.body.finish()

    def client_gone(self) -> None:
        """The client left (a reset, or a FIN without ``half_close``): stop now.

        A client that leaves after the whole response was written changes
        nothing but ``is_disconnected()``: the producer is closing already.
        """
        if self.writer.is_complete():
            self.disconnected.set()
            return
        self.note(Outcome.CLIENT_GONE)
        if self.event_stream is not None:
            self.event_stream.stop()
        self.disconnected.set()
        self.body.fail(ClientDisconnected("client disconnected"))
        self.stop()

    def stop(self) -> None:
        """Cancel the handler's task; its producer is closed (its ``finally`` runs)."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            if not self._running:  # cancelled before its first step: ``run`` never starts
                task.add_done_callback(self._task_done)

    def abandon(self) -> None:
        """The connection answers this request itself (a protocol error): stop, unlogged."""
        self._ended = True
        self.stop()

    def shutdown_event_stream(self) -> None:
        """The server is stopping: end an open event stream cleanly, now.

        Its last event and the end of the body go out, then the task is cancelled,
        which closes the producer. The browser sees a clean end and reconnects - to
        a restarted server or another instance - with ``Last-Event-ID``.
        """
        live = self.event_stream
        if live is not None and live.end_with(live.response.shutdown_event):
            self.note(Outcome.SHUTDOWN)
            self.stop()

    def probe_event_stream(self) -> None:
        """The client sent EOF (with ``half_close``): an event stream pings at once."""
        if self.event_stream is not None:
            self.event_stream.probe()

    # BodyListener: the handler reads the body

    def body_unread(self, unread: int) -> None:
        high = self.ctx.config.read_high_water
        if unread > high:
            self.flow.pause_reading(ReadPause.BODY)
        elif unread <= high // 2:
            self.flow.resume_reading(ReadPause.BODY)

    def body_first_read(self) -> None:
        # We send 100 Continue only when the handler wants the body.
        self.writer.send_continue()

    # Running the handler

    async def run(self) -> None:
        self._running = True
        request = self.request
        try:
            response = await self._call_handler()
            if isinstance(response, StreamingResponse):
                await self._send_stream(response)
            else:
                self._send_whole(response)
        except asyncio.CancelledError:
            # The client left, the server shut down, or a protocol error took over:
            # whoever cancelled us noted the outcome.
            raise
        except Exception:
            # The response had started (a producer raised, a write failed).
            logger.exception("response failed for %s %s", request.method, request.target)
            self.note(Outcome.ERROR)
            self._cut_short()
        finally:
            self._end()
            if self.task is not None:
                self.ctx.tasks.discard(self.task)

    async def _call_handler(self) -> Response | StreamingResponse:
        """The handler's response, or the error response the error policy gives."""
        ctx = self.ctx
        request = self.request
        try:
            if ctx.is_async:
                response = await ctx.handler(request)  # type: ignore[misc]
            else:
                response = await ctx.pool.run(ctx.handler, request)
            if isinstance(response, FileResponse):
                # stat, open, and 304/412/416/206 decisions touch the disk.
                replacement = await ctx.pool.run(response.prepare, request.method, request.headers)
                if replacement is not None:
                    response = replacement
        except HTTPError as exc:
            return _error_response(exc)
        except Exception:
            logger.exception("handler failed for %s %s", request.method, request.target)
            return self._internal_error()
        if not isinstance(response, (Response, StreamingResponse)):
            logger.error(
                "handler for %s %s returned %r, not a Response",
                request.method,
                request.target,
                response,
            )
            return self._internal_error()
        return response

    def _internal_error(self) -> Response:
        self.note(Outcome.ERROR)
        return Response("Internal Server Error\n", status=500)

    def _send_whole(self, response: Response) -> None:
        if self.writer.is_closing():
            return
        headers, body = response.headers, response.body
        if response.compress:
            headers, body = compress_whole(headers, body, self._accept_encoding())
        self.writer.send_whole(response.status, headers, body)

    async def _send_stream(self, response: StreamingResponse) -> None:
        writer = self.writer
        ctx = self.ctx
        source = open_source(response.content, ctx.pool, writer.room)
        ctx.open_streams += 1
        ctx.stats_changed()
        pending: asyncio.Future[Any] | None = None
        try:
            if writer.is_closing():
                return
            first = NOTHING
            if self.request.method != "HEAD" and not isinstance(response, FileResponse):
                try:  # the head waits (briefly) for the first item: see pull_first
                    first, pending = await pull_first(source, ctx.config.first_item_wait)
                except HTTPError as exc:
                    self._send_whole(_error_response(exc))
                    return
                except Exception:
                    logger.exception(
                        "stream failed before its first item for %s %s",
                        self.request.method,
                        self.request.target,
                    )
                    self._send_whole(self._internal_error())
                    return
            headers, compressor = response.headers, None
            if response.compress and response.content_length is None:
                headers, compressor = compress_stream(headers, self._accept_encoding())
            writer.start_body(response.status, headers, response.content_length, compressor)
            if not writer.is_open():
                return  # HEAD, 204, 304: a head and no body (the producer is not pulled)
            if isinstance(response, EventSourceResponse):
                live = self.event_stream = LiveEventStream(writer, response, ctx.loop)
                live.start()
                if ctx.shutting_down.is_set():  # stopping already: end at once
                    live.end_with(response.shutdown_event)
                    self.note(Outcome.SHUTDOWN)
                    return
            if isinstance(response, FileResponse) and writer.can_sendfile():
                sent = await self._sendfile(response)
            else:
                sent = await writer.pump(source, first, pending)
            if sent:
                writer.end()
                if getattr(response.content, "ended_by_shutdown", False):
                    self.note(Outcome.SHUTDOWN)  # a producer that stopped for it (ASGI SSE)
            else:
                self._client_left()
        finally:
            if isinstance(response, FileResponse):
                response.close()
            if self.event_stream is not None:
                self.event_stream.stop()
            await close_source(source, pending)
            ctx.open_streams -= 1
            ctx.stats_changed()

    async def _sendfile(self, response: FileResponse) -> bool:
        assert response.file is not None
        try:
            return await self.writer.sendfile(response.file, response.offset, response.count)
        except SendfileStalled:
            logger.info("client %s stopped reading a file; closing", self.client)
            self.note(Outcome.STALLED)
            return False

    def _accept_encoding(self) -> list[str]:
        return self.request.headers.get_all("accept-encoding")

    def _client_left(self) -> None:
        # A write found the client gone (or cut off) before connection_lost told us.
        self.note(Outcome.CLIENT_GONE)
        self.disconnected.set()
        self.writer.reset()

    def _cut_short(self) -> None:
        """After a failure: a 500 if nothing was sent, else end the body honestly."""
        writer = self.writer
        if writer.is_closing():
            return
        if not writer.head_sent:
            writer.send_error(500, "Internal Server Error")
            return
        live = self.event_stream
        if live is not None and live.end_with(live.response.error_event):
            return  # an event stream has a way to say "failed"
        self.port.must_close()
        writer.truncate()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.body.detach()
        request = self.request
        writer = self.writer
        self.ctx.record_response(
            self.client,
            request.method,
            request.target,
            request.http_version,
            writer.status,
            writer.bytes_sent,
            time.perf_counter() - self.time_start,
            self.outcome or Outcome.COMPLETE,
        )
        self.port.exchange_finished(self)


def _error_response(exc: HTTPError) -> Response:
    return Response(f"{exc.detail}\n", status=exc.status, headers=exc.headers)
