"""HTTP/1.1 over asyncio: an :class:`HTTPConnection` per client, an :class:`Exchange` per request.

Theory of operation
-------------------
h11 parses; we own the transport. ``data_received`` shows head bytes to the head
guard and chunked body bytes to the chunk guard (our own checks, stricter than
h11's), feeds them to h11 and pulls events until h11 needs more data. A
``Request`` event starts an :class:`Exchange` (:mod:`tinystream._exchange`): a
task that calls the handler and hands its response to this connection's
:class:`~tinystream._writer.ResponseWriter`, the one place that writes response
bytes. Request body ``Data`` events go to the exchange, whose
:class:`~tinystream.request.BodyReader` reports unread bytes so the exchange can
pause the socket while the handler reads slowly. One request is answered at a
time; bytes of pipelined requests wait in h11's buffer until the exchange ends
and ``start_next_cycle`` makes h11 parse them.

Rules the connection and its exchanges keep:

1. Nothing a client sends reaches a handler unless h11 parsed it *and* it passed
   our own checks (:mod:`tinystream._headguard`, :mod:`tinystream._chunkguard`,
   :meth:`HTTPConnection._refusal`). Every refusal is a 4xx/5xx with
   ``Connection: close`` followed by a lingering close, so the client reads the
   error before the socket goes away. A refusal that interrupts an exchange
   (``_refuse``) abandons it: the connection answers and logs, not the exchange.
2. Every other exchange ends exactly once, in ``Exchange._end``, which writes the
   access-log line and calls :meth:`HTTPConnection.exchange_finished`.
3. When the client goes away - ``connection_lost``, or a FIN unless
   ``half_close`` is set - the exchange's task is cancelled at once; the
   producer's ``aclose()``/``close()`` runs in the exchange's ``finally``,
   started or not.
4. The writer's producer loop never runs unboundedly without yielding to the
   event loop: it waits while the transport is paused and otherwise yields every
   ``YIELD_EVERY`` writes, so a producer that never awaits can neither starve
   other clients nor outlive its own client.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import socket
from collections.abc import Callable

import h11

from ._chunkguard import ChunkGuard
from ._context import Handler, Outcome, ServerContext
from ._exchange import Exchange
from ._flow import FlowControl, ReadPause
from ._headguard import HeadGuard, HeadRejected
from ._writer import ResponseWriter
from .chunked import ChunkedDecodingError
from .errors import HTTPError
from .request import parse_target

__all__ = ["HTTPConnection", "Handler", "ServerContext"]

logger = logging.getLogger("tinystream.error")

#: After a write on a half-closed connection, check this much later whether the
#: peer answered it with a reset, i.e. it had really closed, not half-closed.
#: Loopback and LAN round trips are far below this; a distant client is caught by
#: its next write instead.
RESET_CHECK_DELAY = 0.02  # seconds
#: After an error response we stop writing and read (and drop) what the client
#: still sends for this long, so it can read our response before the socket closes
#: (closing with unread input makes the kernel send RST, which can destroy it).
LINGER_TIMEOUT = 2.0  # seconds
#: ... and at most this many bytes: without a byte bound a client blasting a refused
#: 1 GiB upload had 362 MiB read and dropped in the 2 s. A client that reads while
#: it writes (browsers, curl) has the response long before this; one that does not
#: read until it has written everything would lose it to the reset either way. Go's
#: net/http reads at most 256 KiB of an unread body (maxPostHandlerReadBytes).
LINGER_MAX_BYTES = 256 * 1024  # bytes
_OK_VERSIONS = (b"1.1", b"1.0")
#: Longest reason shown in an error body. h11 quotes a whole offending line, which
#: can be as long as the head limit; the client needs only enough to recognise it.
MAX_REASON = 200  # characters
# h11 quotes offending bytes as Python reprs: "illegal header line:
# bytearray(b'Bad Header')", "(expected b'\r\n')". Issue 11: a client should see the
# bytes, not a Python type; the quoted, escaped text inside is kept.
_QUOTED = r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
_BYTES_REPR = re.compile(rf"bytearray\(b{_QUOTED}\)|\bb{_QUOTED}")


class ConnState(enum.Enum):
    WAITING = "waiting"  # between requests: nothing of the next one received yet
    HEAD = "head"  # part of a request head has arrived
    ACTIVE = "active"  # a request is being answered
    DRAINING = "draining"  # an error was sent; dropping input until the close
    CLOSING = "closing"  # transport.close() called, flushing
    CLOSED = "closed"


class HTTPConnection(asyncio.Protocol):
    """One client connection: transport callbacks, the h11 loop, keep-alive and timeouts."""

    # Slots: thousands of idle event-stream connections each carry one of these.
    __slots__ = (
        "_chunks",
        "_config",
        "_deadline",
        "_deadline_at",
        "_deadline_callback",
        "_drained",
        "_guard",
        "_has_body",
        "_keep_alive",
        "_over_capacity",
        "_pipelined",
        "_reset_check",
        "_stall_timer",
        "client",
        "client_eof",
        "ctx",
        "exchange",
        "flow",
        "h11",
        "state",
        "transport",
        "writer",
    )

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._config = ctx.config
        self.h11 = self._new_parser()
        self._guard = HeadGuard(ctx.config.max_head_size)
        self._chunks: ChunkGuard | None = None  # checks a chunked body while it arrives
        # Per-connection state
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.writer: ResponseWriter | None = None
        self.state = ConnState.WAITING
        self.client: tuple[str, int] | None = None
        # One deadline at a time (idle, head, flush, linger); see _set_deadline.
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_at = 0.0
        self._deadline_callback: Callable[[], None] | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self.client_eof = False
        self._reset_check: asyncio.TimerHandle | None = None
        self._keep_alive = True
        self._pipelined = 0
        self._over_capacity = False
        self._drained = 0  # bytes dropped since a refusal (DRAINING)
        self._has_body = False  # the request being answered has a body to come
        # Per-request state
        self.exchange: Exchange | None = None

    def __repr__(self) -> str:
        return f"<HTTPConnection {self.client} {self.state.value} {self.flow!r}>"

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        config = self._config
        transport.set_write_buffer_limits(high=config.write_high_water, low=config.write_low_water)
        self.flow = FlowControl(transport)
        self.writer = ResponseWriter(transport, self.h11, self.flow, self.ctx)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        self.ctx.connections.add(self)
        # Past the limit we still read the request, so we can answer it with a
        # proper 503 rather than a reset the client cannot interpret.
        self._over_capacity = len(self.ctx.connections) > config.max_connections
        # A connection that never sends a byte is closed like an idle keep-alive one.
        self._set_deadline(config.keep_alive_timeout, self._on_idle_timeout)
        self.ctx.stats_changed()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is ConnState.DRAINING:
            self._drain(len(data))
            return
        if state is ConnState.CLOSED or state is ConnState.CLOSING:
            return
        if self._guard.active:
            if state is ConnState.WAITING:
                head = self._begin_head(data)
                if not head:
                    return
                data = head
            if not self._check_head(data):
                return
        elif self._chunks is not None:
            reason = self._scan_chunks(data)
            if reason is not None:
                self._refuse(400, reason)
                return
        elif (their_state := self.h11.their_state) is h11.DONE:
            # The next request, sent before we finished answering this one.
            self._pipelined += len(data)
            if self._pipelined > self._config.max_pipeline_buffer:
                assert self.flow is not None
                self.flow.pause_reading(ReadPause.PIPELINE)
        elif their_state is h11.MUST_CLOSE:
            return  # after a request that closes the connection: dropped (_handle_events)
        self.h11.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.state is not ConnState.ACTIVE and self.state is not ConnState.HEAD:
            # Nothing in progress: let the transport close once what we already
            # wrote (a response that was ready) is flushed.
            return False
        if self.h11.their_state is not h11.MUST_CLOSE:  # else h11 may hold bytes we drop
            self.h11.receive_data(b"")
            self._handle_events()
        exchange = self.exchange
        if exchange is None:
            return self.state is ConnState.ACTIVE
        if self._config.half_close:
            # RFC 9112 §9.6 lets a client half-close and still read: keep answering.
            # A client that really left is noticed when a write draws a reset
            # (_wrote_after_eof); an event stream probes with a ping at once.
            assert self.writer is not None
            self.writer.after_eof = self._wrote_after_eof
            exchange.probe_event_stream()
            return True
        # A FIN is how browsers, curl and httpx leave: stop the handler and its
        # producer now, not at their next write, which may be minutes away.
        # Requests pipelined behind this one are dropped with the connection.
        logger.debug("client %s closed its connection mid-response", self.client)
        exchange.client_gone()
        return True  # the exchange's end closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = ConnState.CLOSED
        self._drop_deadline()
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
        self.ctx.stats_changed()

    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.ctx.loop.call_later(
                self._config.write_stall_timeout, self._on_write_stall
            )
        self.ctx.stats_changed()

    def resume_writing(self) -> None:
        assert self.flow is not None
        self.flow.resume_writing()
        self._cancel_stall_timer()
        self.ctx.stats_changed()

    def write_backlog(self) -> tuple[bool, int]:
        if self.flow is None or self.transport is None:
            return False, 0
        return self.flow.write_paused, self.transport.get_write_buffer_size()

    # The h11 loop

    def _handle_events(self) -> None:
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                logger.debug("protocol error from %s: %s", self.client, exc)
                self._refuse(exc.error_status_hint, _readable(str(exc)))
                return
            kind = type(event)
            if kind is h11.Data:
                assert self.exchange is not None
                if not self.exchange.receive_body(bytes(event.data)):  # type: ignore[union-attr]
                    return
            elif kind is h11.Request:
                self._on_request(event)  # type: ignore[arg-type]
                state = self.state
                if state is ConnState.ACTIVE:
                    their_state = conn.their_state
                    if their_state is h11.MUST_CLOSE:
                        return  # a body-less request that closes: see EndOfMessage below
                    if their_state is h11.DONE:
                        return  # its end was taken (_on_request): h11 would say PAUSED
                else:
                    return
            elif kind is h11.EndOfMessage:
                assert self.exchange is not None
                self.exchange.end_of_body()
                if conn.their_state is h11.MUST_CLOSE:
                    # HTTP/1.0 or "Connection: close": RFC 9112 §9.6 says process no
                    # further request on this connection. h11 raises "Got data when
                    # expecting EOF" on any byte after it (an older client's stray
                    # CRLF after a POST body): serve this request, drop the rest.
                    return
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
        assert self.writer is not None and self.flow is not None
        exchange = self.exchange = Exchange(
            self, self.ctx, self.writer, self.flow, self.client, event, method, path, query
        )
        if not self._has_body:
            # RFC 9112 §6.3: no Content-Length and no Transfer-Encoding (or a zero
            # length) is an empty body, and h11 has its EndOfMessage ready. Taking
            # it now lets a handler that answers at once (eagerly) find the request
            # complete, so the connection is kept alive.
            end = self.h11.next_event()
            assert type(end) is h11.EndOfMessage, end
            exchange.end_of_body()
        exchange.start()

    def _refusal(self, event: h11.Request) -> tuple[int, str] | None:
        """Our checks on a request h11 accepted: ``(status, reason)`` to refuse it, or None."""
        if event.http_version not in _OK_VERSIONS:
            return 505, "only HTTP/1.0 and HTTP/1.1 are supported"
        content_length = transfer_encoding = False
        self._has_body = False
        for name, value in event.headers:
            if name == b"content-length":
                content_length = True
                length = int(value)
                limit = self._config.max_body_size
                if limit is not None and length > limit:
                    return 413, f"request body larger than {limit} bytes"
                self._has_body = length > 0
            elif name == b"transfer-encoding":
                transfer_encoding = True
        if content_length and transfer_encoding:
            # RFC 9112 §6.3: such a message may be a smuggling attempt; h11 would let
            # Transfer-Encoding win, a proxy in front of us might not.
            return 400, "both Content-Length and Transfer-Encoding"
        if self._over_capacity:
            return 503, "too many connections"
        if transfer_encoding:
            self._has_body = True
            # h11 accepted it, so the coding is chunked (h11 answers any other with
            # 501). Check the body bytes h11 already holds; later ones are checked
            # in data_received before h11 sees them.
            self._chunks = ChunkGuard()
            reason = self._scan_chunks(self.h11.trailing_data[0])
            if reason is not None:
                return 400, reason
        return None

    def _scan_chunks(self, data: bytes) -> str | None:
        """Show chunked body bytes to the chunk guard; the reason if it refused them."""
        guard = self._chunks
        assert guard is not None
        try:
            end = guard.feed(data)
        except ChunkedDecodingError as exc:
            self._chunks = None
            return str(exc)
        if end is not None:
            self._chunks = None  # the body ended: what follows is the next request's
        return None

    # Ending an exchange, keep-alive and closing

    def exchange_finished(self, exchange: Exchange) -> None:
        self.exchange = None
        self.ctx.requests_served += 1
        self.ctx.stats_changed()
        if self.state is not ConnState.ACTIVE:
            return
        assert self.writer is not None
        if self.writer.is_closing():
            # The exchange cut its response short (writer.truncate): flushing.
            self.state = ConnState.CLOSING
            self._set_deadline(self._config.write_stall_timeout, self._abort)
            return
        conn = self.h11
        if (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and self._keep_alive
            and not self.client_eof
            and not self.ctx.shutting_down.is_set()
        ):
            if self._next_cycle():
                self._handle_events()  # a no-op when the exchange ended inside it
        elif conn.our_state is h11.DONE or conn.our_state is h11.MUST_CLOSE:
            if conn.their_state is h11.SEND_BODY and not self.client_eof:
                self._linger()  # answered without reading the whole body
            else:
                self._close()
        else:
            self._abort()

    def streaming(self) -> None:
        # The deadline timer, left armed while a request is served (_set_deadline),
        # would keep its handle for keep_alive_timeout on every open stream.
        self._drop_deadline()

    def _next_cycle(self) -> bool:
        """Start the next request/response cycle; True when pipelined bytes await parsing."""
        assert self.flow is not None
        self.h11.start_next_cycle()
        self.state = ConnState.WAITING
        self._guard.reset()
        self._chunks = None
        self._pipelined = 0
        self.flow.resume_reading(ReadPause.PIPELINE)
        pending, _ = self.h11.trailing_data
        head = self._begin_head(pending) if pending else b""
        if head is None:
            return False  # refused
        if len(head) != len(pending):
            # Empty lines came before the pipelined request. h11 would refuse them
            # and cannot drop bytes it holds, so a fresh parser takes the rest; at
            # the start of a cycle the old one holds no other state. (No EOF to pass
            # on: a client that sent one is not given another cycle.)
            self.h11 = self._new_parser()
            assert self.writer is not None
            self.writer.use_parser(self.h11)
            if head:
                self.h11.receive_data(head)
        if not head:
            self._set_deadline(self._config.keep_alive_timeout, self._on_idle_timeout)
            return False
        # A pipelined request is already buffered: check its head, then parse it.
        return self._check_head(head)

    def _new_parser(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._config.max_head_size)

    def _begin_head(self, data: bytes) -> bytes | None:
        """Drop empty lines before a request line; start the head if more follows.

        RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a
        request line (older clients send a CRLF after a POST body); h11 refuses it.
        Empty lines do not start the header deadline or extend the idle one: a
        client cannot hold a connection open by sending them.

        Returns what is left of ``data`` (``b""`` while only empty lines came), or
        None when the request was refused (answered).
        """
        try:
            skip = self._guard.skip_empty_lines(data)
        except HeadRejected as exc:
            self._refuse(exc.status, exc.reason)
            return None
        if skip:
            data = data[skip:]
            if not data:
                return data
        self._start_head()
        return data

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

    def _wrote_after_eof(self) -> None:
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
        """Do not reuse this connection after the current response (and say so in it)."""
        self._keep_alive = False
        if self.writer is not None:
            self.writer.close_after = True

    def _close(self, *, truncate: bool = False, reset: bool = False) -> None:
        """Close once buffered output is flushed; reset if the client never reads it.

        ``truncate``: a response is cut short (the writer decides FIN or reset).
        """
        if self.state is ConnState.CLOSED or self.state is ConnState.CLOSING:
            return
        assert self.writer is not None
        self.state = ConnState.CLOSING
        if truncate:
            self.writer.truncate(reset=reset)
        else:
            self.writer.close()
        self._set_deadline(self._config.write_stall_timeout, self._abort)

    def _abort(self) -> None:
        """Cut the connection off with a reset (the writer frees the socket at once)."""
        if self.writer is not None:
            self.writer.reset()

    def _refuse(self, status: int, reason: str, request: h11.Request | None = None) -> None:
        """Answer with an error (if no response has started), then close lingeringly.

        ``request`` is the parsed request being refused, when there is one: a
        refused HEAD gets its status line and fields but no body.
        """
        exchange = self.exchange
        writer = self.writer
        assert writer is not None and self.flow is not None
        method = target = version = "-"
        if request is not None:
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            version = request.http_version.decode("ascii", "replace")
        if exchange is not None:
            if writer.head_sent:
                # Too late for a status line: cut the response short instead. The
                # exchange ends as usual (its task is cancelled) and logs it.
                exchange.note(Outcome.ERROR)
                exchange.stop()
                self._abort()
                return
            self.exchange = None
            exchange.abandon()
            seen = exchange.request
            method, target, version = seen.method, seen.target, seen.http_version
        writer.begin(head_only=method == "HEAD")
        try:
            size = writer.send_error(status, reason, [(b"connection", b"close")])
        except h11.LocalProtocolError:
            # h11 will not send a response in its current state (e.g. we already
            # sent one); the client is owed nothing more.
            self._abort()
            return
        self.ctx.record_response(
            self.client, method, target, version, status, size, 0.0, Outcome.ERROR
        )
        self._linger()

    def _linger(self) -> None:
        """Lingering close: shut our write side, drop what the client still sends.

        Closing a socket with unread input makes the kernel send a reset, which
        can destroy the response the client has not read yet (RFC 9112 §9.6).
        """
        assert self.writer is not None and self.flow is not None
        self.state = ConnState.DRAINING
        if not self.writer.shut_write():
            self._close()
            return
        self.flow.resume_all_reading()
        self._drained = 0
        self._set_deadline(LINGER_TIMEOUT, self._abort)

    def _drain(self, size: int) -> None:
        """Drop ``size`` bytes read during a lingering close; reset once the budget is spent.

        The client has had its chance to read the response: it was written before
        the first dropped byte. Closing with unread input resets the connection
        anyway (the kernel sends RST), so we reset outright and free the socket now.
        """
        self._drained += size
        if self._drained > LINGER_MAX_BYTES:
            logger.debug(
                "client %s sent over %d bytes after a refusal", self.client, LINGER_MAX_BYTES
            )
            self._abort()

    # Timeouts

    def _set_deadline(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` in ``delay`` seconds, unless another deadline replaces it.

        Every request sets two deadlines (its head, then the idle keep-alive) and
        cancels one: with a timer each, that is two timers made and cancelled per
        request. Instead one timer stays armed; a deadline later than it only moves
        ``_deadline_at``, and the timer, when it fires, re-arms for the rest.
        """
        loop = self.ctx.loop
        at = self._deadline_at = loop.time() + delay
        self._deadline_callback = callback
        timer = self._deadline
        if timer is not None:
            if timer.when() <= at:
                return  # it fires first and re-arms (_on_deadline)
            timer.cancel()
        self._deadline = loop.call_at(at, self._on_deadline)

    def _cancel_deadline(self) -> None:
        self._deadline_callback = None  # the armed timer finds nothing to do

    def _drop_deadline(self) -> None:
        """The connection is gone: free the timer (it holds this connection)."""
        self._deadline_callback = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        timer, self._deadline = self._deadline, None
        callback = self._deadline_callback
        if callback is None or timer is None:
            return
        if self._deadline_at > timer.when():
            self._deadline = self.ctx.loop.call_at(self._deadline_at, self._on_deadline)
            return
        self._deadline_callback = None
        callback()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _on_idle_timeout(self) -> None:
        if self.state is ConnState.WAITING:
            self._close()

    def _on_header_timeout(self) -> None:
        if self.state is ConnState.HEAD:
            logger.debug("request head from %s not complete in time", self.client)
            self._refuse(408, "request head not received in time")

    def _on_write_stall(self) -> None:
        self._stall_timer = None
        logger.info("client %s stopped reading; closing the connection", self.client)
        if self.exchange is not None:
            self.exchange.note(Outcome.STALLED)
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
        """The grace period is over: end whatever is in flight.

        A stream whose client is reading is truncated cleanly (everything sent
        is delivered, then a FIN); a client that does not read, or a body with no
        end marker, is reset so its buffers are freed at once.
        """
        exchange = self.exchange
        if exchange is None:
            self._abort()
            return
        exchange.note(Outcome.SHUTDOWN)
        exchange.stop()
        assert self.flow is not None
        self._close(truncate=True, reset=self.flow.write_paused)


def _readable(message: str) -> str:
    """h11's error message as a client should read it: no Python reprs, bounded."""
    text = _BYTES_REPR.sub(lambda m: m.group(1) or m.group(2), message)
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."
