"""One request and its response: the handler's task, the body reader, the writing.

:class:`Exchange` is created by the connection (:mod:`tinystream.server`) for each
request h11 parses. It runs the handler in a task, writes what the handler
returns - a fixed body, a stream (chunked, by length, or close-delimited), a file
by sendfile(2), an event stream with its pings - and ends exactly once, in
``run()``'s ``finally``, which counts the response and hands the connection back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import h11

from ._compress import COMPRESS_MIN, GzipStream, accepts_gzip, gzip_body
from ._context import PHRASES, response_ended
from ._flow import ReadPause
from ._threads import SyncIteratorPump
from .chunked import LAST_CHUNK, encode_chunk
from .datastructures import Headers
from .errors import ClientDisconnected, HTTPError
from .files import FileResponse
from .request import BodyReader, Disconnect, Request
from .responses import Response, StreamingResponse
from .sse import PING
from .streams import EventSourceResponse

if TYPE_CHECKING:
    from .server import HTTPConnection

__all__ = ["Exchange"]

logger = logging.getLogger("tinystream.error")

#: The streaming loop yields to the event loop after this many writes that did not
#: fill the transport, so other connections and ``connection_lost`` get to run.
YIELD_EVERY = 32  # writes


class Exchange:
    """One request and its response: runs the handler and writes what it returns."""

    __slots__ = (
        "body",
        "body_received",
        "bytes_sent",
        "compressor",
        "conn",
        "disconnected",
        "event_stream",
        "last_write",
        "mode",
        "outcome",
        "ping_timer",
        "request",
        "started",
        "status",
        "task",
        "time_start",
    )

    def __init__(
        self, conn: HTTPConnection, event: h11.Request, method: str, path: str, query: str
    ) -> None:
        self.conn = conn
        ctx = conn.ctx
        self.time_start = time.perf_counter()
        self.body = BodyReader(self)
        self.body_received = 0
        self.disconnected = Disconnect()
        self.request = request = Request.__new__(Request)  # target already parsed: no __init__
        request._setup(
            method,
            event.target.decode("ascii"),
            path,
            query,
            Headers._from_lowercase(list(event.headers)),
            event.http_version.decode("ascii"),
            conn.client,
            self.body,
            self.disconnected,
            ctx.shutting_down,
        )
        self.status = 0
        self.bytes_sent = 0
        self.started = False  # the status line has been written
        self.outcome: str | None = None
        self.task: asyncio.Task[None] | None = None
        # Streaming state
        self.mode = 0  # body framing of a streaming response, once its head is sent
        self.event_stream: EventSourceResponse | None = None
        self.ping_timer: asyncio.TimerHandle | None = None
        self.last_write = 0.0  # loop time of the last body write (for pings)
        self.compressor: GzipStream | None = None

    def start(self) -> None:
        ctx = self.conn.ctx
        task = ctx.loop.create_task(self.run())
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)
        # A task cancelled before its first step (the client left in the same
        # loop iteration as its request arrived) never enters ``run``, so its
        # ``finally`` cannot end the exchange: this callback does.
        task.add_done_callback(self._task_done)
        self.task = task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self.conn.exchange is self:
            self._finish()

    # Connection interface

    def receive_body(self, data: bytes) -> bool:
        """Pass body bytes to the handler; False when the body is refused as too large."""
        self.body_received += len(data)
        limit = self.conn.ctx.config.max_body_size
        if limit is not None and self.body_received > limit:
            assert self.conn.flow is not None
            self.body.fail(HTTPError(413, f"request body larger than {limit} bytes"))
            self.conn.flow.pause_reading(ReadPause.BODY)
            self.conn.must_close()
            return False
        self.body.feed(data)
        return True

    def client_gone(self) -> None:
        """``connection_lost``: stop the handler and its producer now."""
        if self.outcome is None:
            self.outcome = "client_gone"
        self._stop_pings()
        self.disconnected.set()
        self.body.fail(ClientDisconnected("client disconnected"))
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _write_failed(self) -> None:
        # A write found the transport closing: the client left (the reset that
        # write drew closed it) before connection_lost reached us.
        if self.outcome is None:
            self.outcome = "client_gone"
        self.disconnected.set()

    def stop(self) -> None:
        """Cancel the handler task (its producer is closed); the outcome is set."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def close_delimited(self) -> bool:
        """The body has no end marker: only closing the connection ends it."""
        return self.mode is _CLOSE

    def abandon(self) -> None:
        """The connection answers for us (protocol error): stop without a response."""
        self.outcome = "error"
        self.conn.exchange = None
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def body_unread(self, unread: int) -> None:
        flow = self.conn.flow
        assert flow is not None
        high = self.conn.ctx.config.read_high_water
        if unread > high:
            flow.pause_reading(ReadPause.BODY)
        elif unread <= high // 2:
            flow.resume_reading(ReadPause.BODY)

    def body_first_read(self) -> None:
        # RFC 9110 §10.1.1: a client that sent "Expect: 100-continue" waits for this
        # before sending the body; we send it only when the handler wants the body.
        conn = self.conn
        if conn.h11.they_are_waiting_for_100_continue and not self.started:
            assert conn.transport is not None
            data = conn.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
            if data:
                conn.transport.write(data)

    # Running the handler

    async def run(self) -> None:
        conn = self.conn
        ctx = conn.ctx
        request = self.request
        try:
            try:
                if ctx.is_async:
                    response = await ctx.handler(request)  # type: ignore[misc]
                else:
                    response = await ctx.pool.run(ctx.handler, request)
                if isinstance(response, FileResponse):
                    # stat, open, and 304/412/416/206 decisions touch the disk.
                    replacement = await ctx.pool.run(
                        response.prepare, request.method, request.headers
                    )
                    if replacement is not None:
                        response = replacement
            except HTTPError as exc:
                response = _error_response(exc.status, exc.detail, exc.headers)
            except Exception:
                logger.exception("handler failed for %s %s", request.method, request.target)
                self.outcome = "error"
                response = _error_response(500, "Internal Server Error")
            if isinstance(response, Response):
                self._send_fixed(response)
            elif isinstance(response, StreamingResponse):
                await self._send_stream(response)
            else:
                logger.error(
                    "handler for %s %s returned %r, not a Response",
                    request.method,
                    request.target,
                    response,
                )
                self.outcome = "error"
                self._send_fixed(_error_response(500, "Internal Server Error"))
        except asyncio.CancelledError:
            # The client left, the server shut down, or a protocol error took over:
            # whoever cancelled us has set the outcome.
            raise
        except Exception:
            # The response had started (a producer raised, or a write failed).
            logger.exception("response failed for %s %s", request.method, request.target)
            self.outcome = "error"
            if not self._end_event_stream_with_error():
                # The only honest thing left is to cut the body short.
                conn.truncate(reset=self.mode is _CLOSE)
        finally:
            # An abandoned exchange (a protocol error took over) was answered and
            # logged by the connection; every other one ends here, exactly once.
            if conn.exchange is self:
                self._finish()

    def _finish(self) -> None:
        if self.outcome is None:
            self.outcome = "complete"
        request = self.request
        response_ended(
            self.conn,
            request.method,
            request.target,
            request.http_version,
            self.status,
            self.bytes_sent,
            time.perf_counter() - self.time_start,
            self.outcome,
        )
        self.conn.exchange_finished(self)

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        self.status = status
        self.started = True
        data = self.conn.h11.send(
            h11.Response(
                status_code=status,
                headers=self.conn.ctx.response_headers(headers),
                reason=PHRASES.get(status, b""),
            )
        )
        assert data is not None
        return data

    def _send_fixed(self, response: Response) -> None:
        conn = self.conn
        transport = conn.transport
        assert transport is not None
        if transport.is_closing():
            return
        body = response.body
        headers = response.headers
        if response.compress:
            headers = [*headers, _VARY]
            if len(body) >= COMPRESS_MIN and self._wants_gzip():
                body = gzip_body(body)
                headers.append(_GZIP)
        if response.status not in (204, 304):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        head = self._head(response.status, headers)
        if body and self.request.method != "HEAD":
            conn.h11.send_with_data_passthrough(h11.Data(data=body))  # h11 counts, we write
            # Never writelines(): on CPython 3.12.0-3.12.8 and 3.13.0-3.13.1 it
            # does not pause the protocol (gh-127655), so backpressure would be
            # lost. Joining copies the body; above JOIN_LIMIT a second write()
            # (one more syscall) is cheaper than the copy.
            if len(body) <= JOIN_LIMIT:
                transport.write(head + body)
            else:
                transport.write(head)
                transport.write(body)
            self.bytes_sent = len(body)
        else:
            transport.write(head)
        conn.h11.send(h11.EndOfMessage())

    async def _send_stream(self, response: StreamingResponse) -> None:
        conn = self.conn
        transport = conn.transport
        ctx = conn.ctx
        assert transport is not None
        source = self._open_source(response.content)
        ctx.open_streams += 1
        if ctx.stats_waiters:
            ctx.notify_stats()
        try:
            if transport.is_closing():
                return
            headers = response.headers
            length = response.content_length
            if length is not None:
                headers = [*headers, (b"content-length", b"%d" % length)]
            elif response.compress:
                headers = [*headers, _VARY]
                if self._wants_gzip():
                    headers.append(_GZIP)
                    self.compressor = GzipStream()
            if self.request.method == "HEAD":
                transport.write(self._head(response.status, headers))
                conn.h11.send(h11.EndOfMessage())
                return  # the producer is closed unstarted
            first: Any = _NOTHING
            pending: asyncio.Future[Any] | None = None
            if not isinstance(response, FileResponse):
                # Wait (briefly) for the first item before committing to a status.
                first, pending, refusal = await self._first_item(source)
                if refusal is not None:
                    self._send_fixed(refusal)
                    return
                if transport.is_closing():
                    return
            transport.write(self._head(response.status, headers))
            if length is not None:
                self.mode = _LENGTH
            elif conn.h11.their_http_version == b"1.1":
                self.mode = _CHUNKED
            else:
                self.mode = _CLOSE  # HTTP/1.0: the body ends when we close (h11 knows)
            if isinstance(response, EventSourceResponse) and not self._start_event_stream(response):
                return  # the server was already stopping: the stream ended at once
            if isinstance(response, FileResponse) and self._can_sendfile():
                if not await self._sendfile(response):
                    return
            elif not await self._pump(source, first, pending):
                self._write_failed()
                return
            self._end_body()
        finally:
            if isinstance(response, FileResponse):
                response.close()
            self._stop_pings()
            ctx.open_streams -= 1
            await _close_source(source)
            if ctx.stats_waiters:
                ctx.notify_stats()

    async def _first_item(
        self, source: AsyncIterator[Any]
    ) -> tuple[Any, asyncio.Future[Any] | None, Response | None]:
        """Pull the producer's first item, waiting at most ``first_item_wait``.

        A status line is a promise: once ``200`` is out, a producer that fails can
        only truncate the body. Waiting for the first item lets a stream that fails
        at once (a bad id, a refused query) answer with its real status - its
        ``HTTPError``'s, or 500 - instead of ``200`` and an empty body. A slow
        producer still gets its head out within the bound, so a proxy's read
        timeout and the browser's ``open`` event are not held back.

        Returns ``(first, pending, refusal)``: the first item (``_NOTHING`` if
        none came), the pull still under way when the bound ran out, and the error
        response to send when the producer failed before yielding.
        """
        wait = self.conn.ctx.config.first_item_wait
        if not wait:
            return _NOTHING, None, None
        pending: asyncio.Future[Any] = asyncio.ensure_future(source.__anext__())
        try:
            await asyncio.wait((pending,), timeout=wait)
        except asyncio.CancelledError:
            # The client left while we waited: stop the pull before the producer
            # is closed (an async generator cannot be closed while it runs).
            pending.cancel()
            await asyncio.wait((pending,))
            raise
        if not pending.done():
            return _NOTHING, pending, None  # slow: the head goes now, the item later
        try:
            return pending.result(), None, None
        except StopAsyncIteration:
            return _NOTHING, None, None  # an empty stream: a head and an empty body
        except HTTPError as exc:
            return _NOTHING, None, _error_response(exc.status, exc.detail, exc.headers)
        except Exception:
            request = self.request
            logger.exception(
                "stream failed before its first item for %s %s", request.method, request.target
            )
            self.outcome = "error"
            return _NOTHING, None, _error_response(500, "Internal Server Error")

    def _can_sendfile(self) -> bool:
        # sendfile(2) copies from the page cache straight to the socket; it cannot
        # encrypt, so TLS connections take the read-and-write path.
        transport = self.conn.transport
        return (
            self.mode is _LENGTH
            and transport is not None
            and transport.get_extra_info("sslcontext") is None
            and hasattr(os, "sendfile")
        )

    async def _sendfile(self, response: FileResponse) -> bool:
        """Send the file's span with sendfile(2); False if the client went away."""
        conn = self.conn
        transport = conn.transport
        assert transport is not None and response.file is not None
        loop = conn.ctx.loop
        stall = conn.ctx.config.write_stall_timeout
        offset, remaining = response.offset, response.count
        while remaining:
            size = min(remaining, SENDFILE_SLICE)
            try:
                # A slice at a time, each within the stall timeout: sendfile waits
                # for the socket directly, so the transport's pause/stall machinery
                # never sees a client that stopped reading.
                sent = await asyncio.wait_for(
                    loop.sendfile(transport, response.file, offset, size, fallback=False), stall
                )
            except asyncio.TimeoutError:
                logger.info("client %s stopped reading a file; closing", conn.client)
                self.outcome = "stalled"
                conn._abort()
                return False
            except (ConnectionError, RuntimeError):
                # RuntimeError: the transport closed under us (the client left).
                # (asyncio stops reading during sendfile, so a FIN or reset shows
                # up here, not in eof_received or connection_lost.)
                self._write_failed()
                conn._abort()
                return False
            if sent == 0:
                raise RuntimeError(f"{response.path} shrank while it was being sent")
            _count_for_h11(conn.h11, sent)
            offset += sent
            remaining -= sent
            self.bytes_sent += sent
        return True

    def _wants_gzip(self) -> bool:
        return accepts_gzip(self.request.headers.get_all("accept-encoding"))

    def _end_body(self) -> None:
        transport = self.conn.transport
        assert transport is not None
        if self.compressor is not None:
            tail, self.compressor = self.compressor.finish(), None
            self._write_framed(tail)
        if self.mode is _CHUNKED:
            transport.write(LAST_CHUNK)
        self.conn.h11.send(h11.EndOfMessage())

    def _write_framed(self, data: bytes) -> None:
        transport = self.conn.transport
        assert transport is not None
        if not data:
            return  # an empty chunk would end the body
        if self.mode is _CHUNKED:
            transport.write(encode_chunk(data))
        else:
            transport.write(data)

    def write_body(self, data: bytes) -> None:
        """Write body bytes outside the producer loop (pings, a last event)."""
        self.bytes_sent += len(data)
        if self.compressor is not None:
            data = self.compressor.compress(data)
        self._write_framed(data)
        self.last_write = self.conn.ctx.loop.time()
        if self.conn.client_eof:
            self.conn.wrote_after_eof()

    # Server-Sent Events: pings, the shutdown event, probing after EOF

    def _start_event_stream(self, response: EventSourceResponse) -> bool:
        """Prelude and ping timer; False when the server is already stopping."""
        self.event_stream = response
        if response.prelude:
            self.write_body(response.prelude)
        if self.conn.ctx.shutting_down.is_set():
            self._end_event_stream()
            return False
        if response.ping is not None:
            self.last_write = self.conn.ctx.loop.time()
            self.ping_timer = self.conn.ctx.loop.call_at(
                self.last_write + response.ping, self._on_ping_timer
            )
        return True

    def _on_ping_timer(self) -> None:
        # Ping only after `ping` seconds without any write: every event resets the
        # clock, so a busy stream never carries pings.
        stream = self.event_stream
        assert stream is not None and stream.ping is not None
        now = self.conn.ctx.loop.time()
        if now - self.last_write >= stream.ping * 0.999:  # timers may fire a hair early
            transport = self.conn.transport
            if transport is None or transport.is_closing():
                return
            self.write_body(PING)
        self.ping_timer = self.conn.ctx.loop.call_at(
            self.last_write + stream.ping, self._on_ping_timer
        )

    def _stop_pings(self) -> None:
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None

    def _end_event_stream(self) -> None:
        stream = self.event_stream
        assert stream is not None
        self._stop_pings()
        self.write_body(stream.shutdown_event.encode())
        self._end_body()
        self.outcome = "shutdown"

    def _end_event_stream_with_error(self) -> bool:
        """An event stream has a way to say "failed": a last event, then a clean end."""
        stream = self.event_stream
        transport = self.conn.transport
        if (
            stream is None
            or self.conn.h11.our_state is not h11.SEND_BODY
            or transport is None
            or transport.is_closing()
        ):
            return False
        self.write_body(stream.error_event.encode())
        self._end_body()
        return True

    def shutdown_event_stream(self) -> bool:
        """The server is stopping: end an open event stream cleanly, now.

        Sends the stream's last event and the end of the body, then cancels the
        task, which closes the producer (its ``finally`` runs). The browser sees a
        clean end and reconnects - to a restarted server or another instance -
        with ``Last-Event-ID``. Returns False if this is not an open event stream.
        """
        if self.event_stream is None or self.conn.h11.our_state is not h11.SEND_BODY:
            return False
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return False
        self._end_event_stream()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        return True

    def probe_event_stream(self) -> None:
        """The client sent EOF: a ping now tells a half-close from a client that left."""
        if self.event_stream is not None and self.conn.h11.our_state is h11.SEND_BODY:
            self.write_body(PING)

    def _open_source(self, content: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
        if isinstance(content, AsyncIterable):
            return content.__aiter__()
        if isinstance(content, (list, tuple)):
            return _iterate_in_memory(content)
        return self._iterate_in_thread(iter(content))

    async def _iterate_in_thread(self, iterator: Any) -> AsyncIterator[Any]:
        conn = self.conn
        assert conn.transport is not None
        transport = conn.transport
        high = conn.ctx.config.write_high_water
        pump: SyncIteratorPump[Any] = SyncIteratorPump(iterator, conn.ctx.pool)
        try:
            while True:
                # Pull only what the transport can take before it pauses us.
                budget = max(high - transport.get_write_buffer_size(), 1)
                items = await pump.pull(budget)
                if not items:
                    return
                for item in items:
                    yield item
        finally:
            pump.close()

    async def _pump(
        self, source: AsyncIterator[Any], first: Any, pending: asyncio.Future[Any] | None
    ) -> bool:
        """Write ``first`` (unless ``_NOTHING``), then every item of ``source``.

        ``pending`` is the pull of the first item when it outlasted
        ``first_item_wait``: awaited here, after the head went out. Returns False
        if the client went away first.
        """
        if pending is not None:
            try:
                first = await pending  # cancelling us cancels this pull too
            except StopAsyncIteration:
                return True
        mode = self.mode
        track_time = self.ping_timer is not None
        loop_time = self.conn.ctx.loop.time
        conn = self.conn
        transport = conn.transport
        flow = conn.flow
        assert transport is not None and flow is not None
        h11_conn = conn.h11
        compressor = self.compressor
        sent = 0
        writes = 0
        next_item = source.__anext__
        try:
            while True:
                if first is _NOTHING:
                    try:
                        item = await next_item()
                    except StopAsyncIteration:
                        break
                else:
                    item, first = first, _NOTHING
                chunk = item if type(item) is bytes else _to_bytes(item)
                size = len(chunk)
                if not size:
                    continue  # an empty chunk would end a chunked body
                if transport.is_closing():
                    return False
                sent += size  # payload bytes, before compression
                if compressor is not None:
                    chunk = compressor.compress(chunk)
                    size = len(chunk)
                if mode is _CHUNKED:
                    # One write of one framed buffer, never writelines(): see
                    # JOIN_LIMIT. The copy costs a few microseconds a 64 KiB chunk.
                    transport.write(encode_chunk(chunk))
                else:
                    if mode is _LENGTH:
                        # h11 checks we never exceed the declared Content-Length.
                        h11_conn.send_with_data_passthrough(h11.Data(data=chunk))
                    transport.write(chunk)
                if track_time:
                    self.last_write = loop_time()
                if conn.client_eof:
                    conn.wrote_after_eof()
                if flow.write_paused:
                    writes = 0
                    await flow.wait_writable()
                else:
                    writes += 1
                    if writes >= YIELD_EVERY:
                        writes = 0
                        await asyncio.sleep(0)
        finally:
            self.bytes_sent += sent
        return not transport.is_closing()


#: A fixed body up to this size is joined with its head into one write. The
#: transport's ``writelines()`` would avoid the copy, but on CPython 3.12.0-3.12.8
#: and 3.13.0-3.13.1 it never calls ``pause_writing`` (gh-127655, CVE-2024-12254),
#: so nothing here uses it.
JOIN_LIMIT = 64 * 1024  # bytes

#: sendfile(2) is issued in slices of this size, each bounded by the stall timeout:
#: a client reading at least this much per write_stall_timeout is never cut off.
SENDFILE_SLICE = 256 * 1024  # bytes
_ZEROS = bytes(64 * 1024)
_VARY = (b"vary", b"Accept-Encoding")
_GZIP = (b"content-encoding", b"gzip")


def _count_for_h11(conn: h11.Connection, size: int) -> None:
    # h11 framed this response's Content-Length and checks that exactly that many
    # bytes are sent before EndOfMessage. sendfile(2) sent them past it, so we
    # account for them with a zero buffer (a full slice of bytes is not a copy;
    # nothing of it is written).
    while size > 0:
        piece = min(size, len(_ZEROS))
        conn.send_with_data_passthrough(h11.Data(data=_ZEROS[:piece]))
        size -= piece


#: "No item": the first item of a stream has not been pulled (or there was none).
_NOTHING: Any = object()

# Body framing modes of a streaming response.
_CHUNKED, _LENGTH, _CLOSE = 1, 2, 3


def _to_bytes(item: object) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        # A copy: the producer may reuse a mutable buffer after yielding it.
        return bytes(item)
    raise TypeError(f"a streaming producer yielded {type(item).__name__}, expected bytes or str")


async def _iterate_in_memory(items: list[Any] | tuple[Any, ...]) -> AsyncIterator[Any]:
    # A list cannot block, so no worker thread: iterate it right here.
    for item in items:
        yield item


async def _close_source(source: AsyncIterator[Any]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.exception("closing a streaming producer raised")


def _error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(f"{detail}\n", status=status, headers=headers)
