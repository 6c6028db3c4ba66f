"""One request and its response: the request, its body, the handler, the hand-off.

The connection (:mod:`tinystream.server`) creates an :class:`Exchange` for each
request h11 parses. The exchange builds the :class:`~tinystream.request.Request`,
feeds it the body (with flow control and ``100 Continue``), runs the handler in a
task under one error policy, and hands what the handler returns to the
connection's :class:`~tinystream._writer.ResponseWriter`, which writes every byte.

It talks to its connection through :class:`ConnectionPort` alone, and ends
exactly once (:meth:`Exchange._end`): the first :class:`Outcome` noted wins, the
access-log line is written, and the connection is told.

A handler may also respond *while it runs* instead of returning a response: an
ASGI application sends its head and body from inside its call. It finds its
exchange in :data:`RUNNING` and uses the ``push_*`` methods; the exchange ends
when the pushed response does, and the handler may go on running after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar
from typing import Any, Protocol

import h11

from ._compress import compress_stream, compress_whole
from ._context import Outcome, ServerContext
from ._eventstream import LiveEventStream
from ._flow import FlowControl, ReadPause
from ._producers import NOTHING, close_source, open_source, pull_first
from ._writer import YIELD_EVERY, ResponseWriter, SendfileStalled
from .errors import ClientDisconnected, HTTPError
from .files import FileResponse
from .request import BodyReader, Disconnect, Request
from .responses import Response, StreamingResponse
from .streams import EventSourceResponse

__all__ = ["PUSHED", "RUNNING", "ConnectionPort", "Exchange", "Pusher"]

logger = logging.getLogger("tinystream.error")


class ConnectionPort(Protocol):
    """What an exchange may ask of its connection."""

    def must_close(self) -> None:
        """Do not reuse the connection after this response."""

    def exchange_finished(self, exchange: Exchange) -> None:
        """The exchange ended (it was counted and logged): take the connection back."""

    def streaming(self) -> None:
        """A streamed body starts (it may stay open for hours): hold nothing for later."""


class Pusher(Protocol):
    """A handler that pushes its response is told when the client leaves."""

    def client_gone(self) -> None:
        """The client left; the handler's task is being cancelled too."""


class Exchange:
    """One request and its response: runs the handler and hands its response to the writer."""

    __slots__ = (
        "_ended",
        "_push_open",
        "_pushed",
        "_running",
        "_writes",
        "body",
        "body_received",
        "client",
        "ctx",
        "disconnected",
        "event_stream",
        "flow",
        "outcome",
        "port",
        "pusher",
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
        self._pushed = False  # the handler responds while it runs (push_*)
        self._push_open = False  # a pushed body is open (counted in open_streams)
        self._writes = 0  # pushed writes since the last yield to the loop
        self.pusher: Pusher | None = None
        writer.begin(head_only=method == "HEAD")

    def start(self) -> None:
        """Run the handler in a task, kept referenced until it ends (``run`` ends it).

        Scheduled, not started eagerly (``eager_start``, 3.12+): measured over real
        sockets, answering inside ``data_received`` cost 8-10 % of the small-response
        rate on 3.12 and 3.13 (the loop reads every ready socket, then runs every
        ready handler: each phase's code stays hot), though it saves instructions.
        """
        ctx = self.ctx
        # From the server's context: the exchange before may have ended inside its
        # handler's task (a pushed response), whose context variables are not ours.
        task = ctx.base_context.copy().run(ctx.loop.create_task, self.run())
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
        if self.pusher is not None:
            self.pusher.client_gone()  # every later send() raises, even if it swallows this
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
            # In this task's context, while the handler is called: how a handler
            # that pushes (an ASGI app, also behind a Router or a wrapper) finds us.
            # Reset after the call: an entry would cost every open stream ~0.2 KiB.
            running = RUNNING.set(self)
            try:
                response = await self._call_handler()
            finally:
                RUNNING.reset(running)
            if response is None:
                return  # pushed while the handler ran: sent already
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
            if not self._ended:  # (a pushed response may have ended already)
                self.note(Outcome.ERROR)
                self._cut_short()
        finally:
            self._end()
            if self.task is not None:
                self.ctx.tasks.discard(self.task)

    async def _call_handler(self) -> Response | StreamingResponse | None:
        """The handler's response, or the error response the error policy gives.

        None when the handler pushed its response. A handler that fails after it
        pushed a head gets no error response: its failure goes to ``run``.
        """
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
            if self._pushed:
                raise
            return _error_response(exc)
        except Exception:
            if self._pushed:
                raise
            logger.exception("handler failed for %s %s", request.method, request.target)
            return self._internal_error()
        if self._pushed or response is PUSHED:
            return None  # (PUSHED without a push: an app that swallowed its cancellation)
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
        if self.writer.is_closing() or self.disconnected.happened:
            return  # (a handler that swallowed its cancellation: nobody to answer)
        headers, body = response.headers, response.body
        if response.compress:
            headers, body = compress_whole(headers, body, self._accept_encoding())
        self.writer.send_whole(response.status, headers, body)

    async def _send_stream(self, response: StreamingResponse) -> None:
        writer = self.writer
        ctx = self.ctx
        source = open_source(response.content, ctx.pool, writer.room)
        ctx.open_streams += 1
        self.port.streaming()
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
            if not self.disconnected.happened:  # (nobody to tell after a FIN)
                writer.send_error(500, "Internal Server Error")
            return
        live = self.event_stream
        if live is not None and live.end_with(live.response.error_event):
            return  # an event stream has a way to say "failed"
        self.port.must_close()
        writer.truncate()

    # Responding while the handler runs (an ASGI app sends from inside its call)

    def push_whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write a whole response now and end; the handler may go on running."""
        self._pushed = True
        if not self.writer.is_closing():
            self.writer.send_whole(status, headers, body)
        self._end()

    def push_head(
        self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None
    ) -> bool:
        """Write the head of a streamed response now; False if no body may follow.

        (HEAD, 204 and 304 responses end with their head; so does one whose
        client is gone.)
        """
        self._pushed = True
        writer = self.writer
        if writer.is_closing():
            self._client_left()
            self._end()
            return False
        writer.start_body(status, headers, content_length)
        if not writer.is_open():
            self._end()
            return False
        self._push_open = True
        self.ctx.open_streams += 1
        self.port.streaming()
        self.ctx.stats_changed()
        return True

    async def push_body(self, chunk: bytes) -> None:
        """Write body bytes; return once the client may take more.

        Waits while the transport is paused (a slow client pauses the handler);
        yields to the loop every ``YIELD_EVERY`` writes otherwise, so a handler
        that never awaits anything else starves nobody.

        Raises:
            ClientDisconnected: the client is gone (or was cut off); nothing was written.
            h11.LocalProtocolError: more bytes than the declared Content-Length.
        """
        writer = self.writer
        if not writer.is_open():
            raise self._pushed_to_nobody()
        writer.write(chunk, hold=True)
        # The pacing of ResponseWriter.pump, written again on purpose: one shared
        # method cost the producer loop 4 % more instructions per SSE event.
        flow = self.flow
        if flow.write_paused:
            self._writes = 0
            await flow.wait_writable()
            if not writer.is_open():
                raise self._pushed_to_nobody()
        else:
            self._writes += 1
            if self._writes >= YIELD_EVERY:
                self._writes = 0
                await asyncio.sleep(0)

    def _pushed_to_nobody(self) -> ClientDisconnected:
        if not self._ended:
            if self.writer.is_closing():
                self.note(Outcome.CLIENT_GONE)  # (a truncation under way is not reset)
            else:
                self._client_left()
            self._end()
        return ClientDisconnected("client disconnected")

    def push_end(self, outcome: Outcome | None = None) -> None:
        """The pushed body is complete (``outcome``: why, if not simply done)."""
        if outcome is not None:
            self.note(outcome)
        if self.writer.is_open():
            self.writer.end()
        self._end()

    def push_truncate(self, outcome: Outcome) -> None:
        """The pushed response cannot be finished: cut it short honestly, and end."""
        self._pushed = True
        if not self._ended:
            self.note(outcome)
            self._cut_short()
            self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.body.detach()
        self.pusher = None  # (it holds this exchange: no cycle left behind)
        if self._pushed and self.task is not None:
            # The app may run on after its response; the adapter tracks it from now
            # on, so shutdown does not wait on it as on a request being answered.
            self.ctx.tasks.discard(self.task)
        if self._push_open:
            self._push_open = False
            self.ctx.open_streams -= 1
            self.ctx.stats_changed()
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


#: What a handler that pushed its response returns (type-correct; never sent: the
#: exchange knows it pushed).
PUSHED = Response(b"", status=200)
#: The exchange whose handler runs in this task: set by :meth:`Exchange.run` in
#: the task's own context, read by a handler that pushes (``tinystream.asgi``).
RUNNING: ContextVar[Exchange | None] = ContextVar("tinystream_exchange", default=None)


def _error_response(exc: HTTPError) -> Response:
    return Response(f"{exc.detail}\n", status=exc.status, headers=exc.headers)
