"""HTTP/1.1 over asyncio: an :class:`HTTPConnection` per client, an :class:`_Exchange` per request.

Theory of operation
-------------------
h11 parses; we own the transport. ``data_received`` feeds bytes to h11 and pulls
events until h11 needs more data. A ``Request`` event starts an :class:`_Exchange`:
a task that calls the handler and writes its response. Request body ``Data``
events go to the exchange's :class:`~tinystream.request.BodyReader`, which pauses
the socket while the handler reads slowly. One request is answered at a time;
bytes of pipelined requests wait in h11's buffer until the exchange ends and
``start_next_cycle`` makes h11 parse them.

Framing has one owner per response. h11 serialises every response *head* (it
validates fields and decides keep-alive and framing) and frames fixed and
known-length bodies. Chunked streaming bodies are framed by :mod:`tinystream.chunked`
- about 0.13 us a chunk where h11 takes 2.2 us - and h11 is only told the body
ended (its ``EndOfMessage`` bytes are dropped: we already wrote the last chunk),
which is all its state machine needs to allow keep-alive.

Rules this module keeps:

1. Nothing a client sends reaches a handler unless h11 parsed it *and* it passed
   our own checks (:mod:`tinystream._headguard`, :meth:`HTTPConnection._refusal`).
   Every refusal is a 4xx/5xx with ``Connection: close`` followed by a lingering
   close, so the client reads the error before the socket goes away.
2. Every exchange ends exactly once, through ``_Exchange.run``'s ``finally``, which
   writes the access-log line and hands the connection back.
3. When the client goes away (``connection_lost``) the exchange's task is
   cancelled at once; the producer's ``aclose()``/``close()`` runs in the
   streaming loop's ``finally``, started or not.
4. The streaming loop never runs unboundedly without yielding to the event loop:
   it waits while the transport is paused and otherwise yields every
   ``YIELD_EVERY`` writes, so a producer that never awaits can neither starve
   other clients nor outlive its own client.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11

from ._compress import COMPRESS_MIN, GzipStream, accepts_gzip, gzip_body
from ._flow import FlowControl, ReadPause
from ._headguard import HeadGuard, HeadRejected
from ._threads import SyncIteratorPump, shared_pool
from .chunked import LAST_CHUNK, SMALL_CHUNK, chunk_pieces
from .config import Config
from .datastructures import Headers
from .errors import ClientDisconnected, HTTPError
from .files import FileResponse
from .request import BodyReader, Disconnect, Request, parse_target
from .responses import Response, StreamingResponse
from .sse import PING
from .streams import EventSourceResponse

__all__ = ["HTTPConnection", "Handler", "ServerContext"]

logger = logging.getLogger("tinystream.error")
access_logger = logging.getLogger("tinystream.access")

AnyResponse = Response | StreamingResponse
Handler = Callable[[Request], Awaitable[AnyResponse] | AnyResponse]

#: The streaming loop yields to the event loop after this many writes that did not
#: fill the transport, so other connections and ``connection_lost`` get to run.
YIELD_EVERY = 32  # writes
#: After a write on a half-closed connection, check this much later whether the
#: peer answered it with a reset, i.e. it had really closed, not half-closed.
#: Loopback and LAN round trips are far below this; a distant client is caught by
#: its next write instead.
RESET_CHECK_DELAY = 0.02  # seconds
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
#: After an error response we stop writing and read (and drop) what the client
#: still sends for this long, so it can read our response before the socket closes
#: (closing with unread input makes the kernel send RST, which can destroy it).
LINGER_TIMEOUT = 2.0  # seconds

_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_OK_VERSIONS = (b"1.1", b"1.0")


class _DateHeader:
    """The ``Date`` field value, formatted once per second (RFC 9110 §6.6.1)."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


_date = _DateHeader()


class ServerContext:
    """What every connection of one server shares: the handler, options and counters."""

    def __init__(self, handler: Handler, config: Config) -> None:
        self.handler = handler
        self.is_async = _is_async_callable(handler)
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.pool = shared_pool(config.max_threads)
        self.connections: set[HTTPConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = asyncio.Event()
        self.open_streams = 0
        self.requests_served = 0
        #: How responses ended, by access-log outcome ("complete", "client_gone" ...).
        self.outcomes: dict[str, int] = {}
        #: Called after each connection closes (graceful shutdown waits with it).
        self.on_connection_closed: Callable[[], None] | None = None
        #: Futures of ``Server.wait_stats`` callers, resolved whenever a statistic
        #: changes. Empty in production, so notifying costs one truth test.
        self.stats_waiters: list[asyncio.Future[None]] = []
        base: list[tuple[bytes, bytes]] = []
        if config.server_header:
            base.append((b"server", config.server_header.encode("latin-1")))
        self.base_headers = base

    def notify_stats(self) -> None:
        waiters, self.stats_waiters = self.stats_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def response_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """A response's fields plus ``Date``, ``Server`` and (stopping) ``Connection: close``."""
        fields = [*headers, (b"date", _date.get()), *self.base_headers]
        if self.shutting_down.is_set():
            fields.append((b"connection", b"close"))
        return fields


def _is_async_callable(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - a class instance's method
    return inspect.iscoroutinefunction(call)


class ConnState(enum.Enum):
    WAITING = "waiting"  # between requests: nothing of the next one received yet
    HEAD = "head"  # part of a request head has arrived
    ACTIVE = "active"  # a request is being answered
    DRAINING = "draining"  # an error was sent; dropping input until the close
    CLOSING = "closing"  # transport.close() called, flushing
    CLOSED = "closed"


class HTTPConnection(asyncio.Protocol):
    """One client connection: transport callbacks, the h11 loop, keep-alive and timeouts."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._config = ctx.config
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=ctx.config.max_head_size)
        self._guard = HeadGuard(ctx.config.max_head_size)
        # Per-connection state
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.state = ConnState.WAITING
        self.client: tuple[str, int] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self.client_eof = False
        self._reset_check: asyncio.TimerHandle | None = None
        self._keep_alive = True
        self._pipelined = 0
        self._over_capacity = False
        # Per-request state
        self.exchange: _Exchange | None = None

    def __repr__(self) -> str:
        return f"<HTTPConnection {self.client} {self.state.value} {self.flow!r}>"

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        config = self._config
        transport.set_write_buffer_limits(high=config.write_high_water, low=config.write_low_water)
        self.flow = FlowControl(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        self.ctx.connections.add(self)
        # Past the limit we still read the request, so we can answer it with a
        # proper 503 rather than a reset the client cannot interpret.
        self._over_capacity = len(self.ctx.connections) > config.max_connections
        # A connection that never sends a byte is closed like an idle keep-alive one.
        self._set_deadline(config.keep_alive_timeout, self._on_idle_timeout)
        if self.ctx.stats_waiters:
            self.ctx.notify_stats()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is ConnState.DRAINING or state is ConnState.CLOSED or state is ConnState.CLOSING:
            return
        if self._guard.active:
            if state is ConnState.WAITING:
                self._start_head()
            if not self._check_head(data):
                return
        elif self.h11.their_state is h11.DONE:
            # The next request, sent before we finished answering this one.
            self._pipelined += len(data)
            if self._pipelined > self._config.max_pipeline_buffer:
                assert self.flow is not None
                self.flow.pause_reading(ReadPause.PIPELINE)
        self.h11.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.state is not ConnState.ACTIVE and self.state is not ConnState.HEAD:
            return False  # nothing in progress: let the transport close
        self.h11.receive_data(b"")
        self._handle_events()
        if self.exchange is not None:
            self.exchange.probe_event_stream()
        # A client that half-closed after sending its request still gets the whole
        # response: keep our side open. (A client that really left is noticed when
        # a write fails, which calls connection_lost.)
        return self.state is ConnState.ACTIVE

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = ConnState.CLOSED
        self._cancel_deadline()
        self._cancel_stall_timer()
        if self._reset_check is not None:
            self._reset_check.cancel()
        self.ctx.connections.discard(self)
        if self.flow is not None:
            self.flow.release()
        if self.exchange is not None:
            self.exchange.client_gone()
        if self.ctx.on_connection_closed is not None:
            self.ctx.on_connection_closed()
        if self.ctx.stats_waiters:
            self.ctx.notify_stats()

    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.ctx.loop.call_later(
                self._config.write_stall_timeout, self._on_write_stall
            )
        if self.ctx.stats_waiters:
            self.ctx.notify_stats()

    def resume_writing(self) -> None:
        assert self.flow is not None
        self.flow.resume_writing()
        self._cancel_stall_timer()
        if self.ctx.stats_waiters:
            self.ctx.notify_stats()

    # The h11 loop

    def _handle_events(self) -> None:
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                logger.debug("protocol error from %s: %s", self.client, exc)
                self._refuse(exc.error_status_hint, str(exc))
                return
            kind = type(event)
            if kind is h11.Data:
                assert self.exchange is not None
                if not self.exchange.receive_body(bytes(event.data)):  # type: ignore[union-attr]
                    return
            elif kind is h11.Request:
                self._on_request(event)  # type: ignore[arg-type]
                if self.state is not ConnState.ACTIVE:
                    return
            elif kind is h11.EndOfMessage:
                assert self.exchange is not None
                self.exchange.body.finish()
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return
            elif kind is h11.ConnectionClosed:
                # The client closed its side. With a response in flight this may be a
                # half-close: finish answering (eof_received keeps the transport).
                if self.exchange is None:
                    self._close()
                return

    def _on_request(self, event: h11.Request) -> None:
        self._cancel_deadline()
        self.state = ConnState.ACTIVE
        refusal = self._refusal(event)
        if refusal is not None:
            self._refuse(*refusal, request=event)
            return
        try:
            method = event.method.decode("ascii")
            path, query = parse_target(event.method, event.target)
        except (HTTPError, UnicodeDecodeError) as exc:
            detail = exc.detail if isinstance(exc, HTTPError) else "invalid method"
            self._refuse(400, detail, request=event)
            return
        self.exchange = _Exchange(self, event, method, path, query)
        self.exchange.start()

    def _refusal(self, event: h11.Request) -> tuple[int, str] | None:
        """Our checks on a request h11 accepted: ``(status, reason)`` to refuse it, or None."""
        if event.http_version not in _OK_VERSIONS:
            return 505, "only HTTP/1.0 and HTTP/1.1 are supported"
        content_length = transfer_encoding = False
        for name, value in event.headers:
            if name == b"content-length":
                content_length = True
                limit = self._config.max_body_size
                if limit is not None and int(value) > limit:
                    return 413, f"request body larger than {limit} bytes"
            elif name == b"transfer-encoding":
                transfer_encoding = True
        if content_length and transfer_encoding:
            # RFC 9112 §6.3: such a message may be a smuggling attempt; h11 would let
            # Transfer-Encoding win, a proxy in front of us might not.
            return 400, "both Content-Length and Transfer-Encoding"
        if self._over_capacity:
            return 503, "too many connections"
        return None

    # Ending an exchange, keep-alive and closing

    def exchange_finished(self, exchange: _Exchange) -> None:
        self.exchange = None
        self.ctx.requests_served += 1
        if self.ctx.stats_waiters:
            self.ctx.notify_stats()
        if self.state is not ConnState.ACTIVE:
            return
        conn = self.h11
        if (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and self._keep_alive
            and not self.client_eof
            and not self.ctx.shutting_down.is_set()
        ):
            self._next_cycle()
        elif conn.our_state is h11.DONE or conn.our_state is h11.MUST_CLOSE:
            self._close()
        else:
            self._abort()

    def _next_cycle(self) -> None:
        assert self.flow is not None
        self.h11.start_next_cycle()
        self.state = ConnState.WAITING
        self._guard.reset()
        self._pipelined = 0
        self.flow.resume_reading(ReadPause.PIPELINE)
        pending, _ = self.h11.trailing_data
        if not pending:
            self._set_deadline(self._config.keep_alive_timeout, self._on_idle_timeout)
            return
        # A pipelined request is already buffered: check its head, then parse it.
        self._start_head()
        if self._check_head(pending):
            self._handle_events()

    def _start_head(self) -> None:
        # The first byte of a head has arrived: the header deadline runs from here
        # and later bytes do not extend it, so a trickled head is cut off.
        self.state = ConnState.HEAD
        self._set_deadline(self._config.header_timeout, self._on_header_timeout)

    def _check_head(self, data: bytes) -> bool:
        """Show head bytes to the guard; False if it refused the request (answered)."""
        try:
            self._guard.feed(data)
        except HeadRejected as exc:
            self._refuse(exc.status, exc.reason)
            return False
        return True

    def wrote_after_eof(self) -> None:
        """A body write went to a client that sent EOF: did it really leave?

        A FIN means either "I will send no more" (half-close: keep answering) or
        "I am gone". Only a write tells them apart - a gone peer answers it with a
        reset - but asyncio stops reading after EOF, so the reset would surface
        only when a *second* write fails. We look at the socket's pending error
        shortly after the write instead.
        """
        if self._reset_check is None:
            self._reset_check = self.ctx.loop.call_later(RESET_CHECK_DELAY, self._check_reset)

    def _check_reset(self) -> None:
        self._reset_check = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            error = 1
        if error:
            logger.debug("client %s had closed its connection", self.client)
            self._abort()

    def must_close(self) -> None:
        """Do not reuse this connection after the current response."""
        self._keep_alive = False

    def _close(self) -> None:
        """Close once buffered output is flushed; abort if the client never reads it."""
        if self.state is ConnState.CLOSED or self.state is ConnState.CLOSING:
            return
        assert self.transport is not None
        self.state = ConnState.CLOSING
        self.transport.close()
        self._set_deadline(self._config.write_stall_timeout, self._abort)

    def _abort(self) -> None:
        """Cut the connection off with a reset.

        A plain close with unsent data queued toward a client that does not read
        leaves the kernel an orphaned socket that keeps probing the zero window,
        holding its send buffer (megabytes) for minutes. SO_LINGER with a zero
        timeout makes close() reset the connection and free everything at once.
        """
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def _refuse(self, status: int, reason: str, request: h11.Request | None = None) -> None:
        """Answer with an error (if no response has started), then close lingeringly.

        ``request`` is the parsed request being refused, when there is one: a
        refused HEAD gets its status line and fields but no body.
        """
        exchange = self.exchange
        method = target = version = "-"
        if request is not None:
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            version = request.http_version.decode("ascii", "replace")
        if exchange is not None:
            if exchange.started:
                # Too late for a status line: cut the response short instead.
                exchange.outcome = "error"
                self._abort()
                return
            exchange.abandon()
            seen = exchange.request
            method, target, version = seen.method, seen.target, seen.http_version
        assert self.transport is not None and self.flow is not None
        body = f"{status} {_PHRASES.get(status, b'Error').decode()}: {reason}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
            (b"date", _date.get()),
            *self.ctx.base_headers,
        ]
        try:
            data = self.h11.send(
                h11.Response(status_code=status, headers=headers, reason=_PHRASES.get(status, b""))
            )
            assert data is not None
            if method != "HEAD":
                data += self.h11.send(h11.Data(data=body)) or b""
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # h11 will not send a response in its current state (e.g. we already
            # sent one); the client is owed nothing more.
            self._abort()
            return
        self.transport.write(data)
        _response_ended(self, method, target, version, status, len(body), 0.0, "error")
        # Lingering close: shut our write side, drop what the client still sends.
        self.state = ConnState.DRAINING
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_all_reading()
        self._set_deadline(LINGER_TIMEOUT, self._abort)

    # Timeouts

    def _set_deadline(self, delay: float, callback: Callable[[], None]) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.ctx.loop.call_later(delay, callback)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _on_idle_timeout(self) -> None:
        self._deadline = None
        if self.state is ConnState.WAITING:
            self._close()

    def _on_header_timeout(self) -> None:
        self._deadline = None
        if self.state is ConnState.HEAD:
            logger.debug("request head from %s not complete in time", self.client)
            self._refuse(408, "request head not received in time")

    def _on_write_stall(self) -> None:
        self._stall_timer = None
        logger.info("client %s stopped reading; closing the connection", self.client)
        if self.exchange is not None:
            self.exchange.outcome = "stalled"
        self._abort()

    # Shutdown

    def begin_shutdown(self) -> None:
        """Stop reusing this connection; close it now if it is between requests.

        An open event stream is ended cleanly at once (it has a way to say so).
        """
        if self.state is ConnState.WAITING:
            self._close()
        elif self.exchange is not None:
            self.exchange.shutdown_event_stream()

    def force_close(self) -> None:
        """The grace period is over: end whatever is in flight."""
        if self.exchange is not None and self.exchange.outcome is None:
            self.exchange.outcome = "shutdown"
        self._abort()


class _Exchange:
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
        self.body = BodyReader(self._on_unread, self._on_first_read)
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
        self.task = task

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

    def abandon(self) -> None:
        """The connection answers for us (protocol error): stop without a response."""
        self.outcome = "error"
        self.conn.exchange = None
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _on_unread(self, unread: int) -> None:
        flow = self.conn.flow
        assert flow is not None
        high = self.conn.ctx.config.read_high_water
        if unread > high:
            flow.pause_reading(ReadPause.BODY)
        elif unread <= high // 2:
            flow.resume_reading(ReadPause.BODY)

    def _on_first_read(self) -> None:
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
            # The response had started (a producer raised, or a write failed): the
            # only honest thing left is to cut the body short.
            logger.exception("response failed for %s %s", request.method, request.target)
            self.outcome = "error"
            conn._abort()
        finally:
            # An abandoned exchange (a protocol error took over) was answered and
            # logged by the connection; every other one ends here, exactly once.
            if conn.exchange is self:
                self._finish()

    def _finish(self) -> None:
        if self.outcome is None:
            self.outcome = "complete"
        request = self.request
        _response_ended(
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
                reason=_PHRASES.get(status, b""),
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
            if len(body) <= SMALL_CHUNK:
                transport.write(head + body)
            else:
                transport.writelines((head, body))
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
            # The head goes out at once: a client (or a proxy's read timeout) sees
            # the response start even if the first item takes minutes.
            transport.write(self._head(response.status, headers))
            if self.request.method == "HEAD":
                conn.h11.send(h11.EndOfMessage())
                return
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
            elif not await self._pump(source):
                return  # the client left mid-stream; connection_lost cancels us
            self._end_body()
        finally:
            if isinstance(response, FileResponse):
                response.close()
            self._stop_pings()
            ctx.open_streams -= 1
            await _close_source(source)
            if ctx.stats_waiters:
                ctx.notify_stats()

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
        if self.mode is _CHUNKED:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
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

    async def _pump(self, source: AsyncIterator[Any]) -> bool:
        """Write every item of ``source``; False if the client went away first."""
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
        try:
            async for item in source:
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
                    if size <= SMALL_CHUNK:
                        transport.write(b"%x\r\n%b\r\n" % (size, chunk))
                    else:
                        transport.writelines(chunk_pieces(chunk))
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


def _response_ended(
    conn: HTTPConnection,
    method: str,
    target: str,
    version: str,
    status: int,
    size: int,
    duration: float,
    outcome: str,
) -> None:
    """Count how the response ended, and write its access-log line."""
    outcomes = conn.ctx.outcomes
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if not conn.ctx.config.access_log or not access_logger.isEnabledFor(logging.INFO):
        return
    host = conn.client[0] if conn.client else "-"
    access_logger.info(
        '%s "%s %s HTTP/%s" %d %d %.1fms %s',
        host,
        method,
        target,
        version,
        status,
        size,
        duration * 1000,
        outcome,
    )
