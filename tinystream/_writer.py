"""Every byte of a response leaves through here: head, body, framing, end, or cut.

Rules this module keeps (and no other module breaks):

1. :class:`ResponseWriter` is the only code that calls ``transport.write`` or
   h11's ``send`` for a response, and the only code that closes or resets a
   connection's transport.
2. h11 writes every status line and the fields that frame the body or decide
   keep-alive (``Content-Length``, ``Transfer-Encoding``, ``Connection``): it is told
   the status and those fields, adds what its rules require, and so always knows
   the framing and whether the connection closes. The other fields are serialised
   here, each checked as h11 would check it (a token name, a value without NUL, CR,
   LF or surrounding whitespace), so none can inject a line; the response types
   refuse such fields when they are built. h11 is kept in step with the body in
   one way per framing, chosen once as a
   :class:`Framing`: a ``LENGTH`` body passes through h11, which checks it never
   exceeds the declared ``Content-Length`` (bytes that sendfile(2) sent are
   represented by a placeholder with a length); ``CHUNKED`` chunks are framed by
   :mod:`tinystream.chunked` - about 16 times cheaper than h11 - and h11 writes
   only the end, the last chunk; a ``CLOSE`` body (HTTP/1.0) has no framing at all.
3. Nothing calls ``transport.writelines()``: on CPython 3.12.0-3.12.8 and
   3.13.0-3.13.1 it never calls ``pause_writing`` (gh-127655, CVE-2024-12254), so
   a client that stops reading would make us buffer without bound. A chunk is
   framed into one buffer and written with ``write()``, which pauses everywhere.
4. Small body writes a producer makes within one event-loop iteration are held
   and go out together, in one ``write()`` when the iteration ends (see
   :meth:`ResponseWriter.pump`); every other write sends what is held first, so
   bytes leave in the order they were written.
5. A body cut short ends with a FIN after everything already written, so the
   client reads all of it and sees the truncation. A reset is for a client that
   does not read (its buffers are freed at once), a client already gone, and a
   close-delimited body, whose only "incomplete" signal a reset is.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

import h11

from ._compress import GzipStream
from ._context import PHRASES, ServerContext
from ._flow import FlowControl
from ._producers import NOTHING, to_bytes
from .chunked import encode_chunk
from .responses import FIELD_NAME, FRAMING_FIELDS, NO_BODY_STATUSES

__all__ = [
    "HOLD_LIMIT",
    "JOIN_LIMIT",
    "SENDFILE_SLICE",
    "Framing",
    "ResponseWriter",
    "error_body",
    "field_lines",
]

logger = logging.getLogger("tinystream.error")

#: A fixed body up to this size is joined with its head into one write (one copy,
#: one syscall); a larger one goes in a second write(), which copies nothing.
JOIN_LIMIT = 64 * 1024  # bytes
#: The producer loop yields to the event loop after this many writes that did not
#: fill the transport, so other connections and ``connection_lost`` get to run.
YIELD_EVERY = 32  # writes
#: Body writes smaller than this, made by the producer loop, are held until the
#: event loop's iteration ends (or this much is held) and then go out as one
#: write: a subscriber woken with thirty queued events makes one send(2), not
#: thirty. A paused transport therefore holds back at most this much more.
HOLD_LIMIT = 16 * 1024  # bytes
#: sendfile(2) is issued in slices of this size, each bounded by the stall timeout:
#: a client reading at least this much per ``write_stall_timeout`` is never cut off.
SENDFILE_SLICE = 256 * 1024  # bytes
# RFC 9110 §5.5 field-value as h11 checks it (h11/_abnf.py): the last line of
# defence, since a response's field list can be changed after it was built.
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class Framing(enum.Enum):
    """How the end of a response body is known (RFC 9112 §6.3)."""

    NONE = "none"  # no body follows the head (HEAD, 204, 304), or it went whole
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    CLOSE = "close"  # HTTP/1.0 peer: the body ends when the connection closes


_CLOSE = (b"connection", b"close")

# Compared on every body write: module constants are cheaper than enum lookups.
_CHUNKED = Framing.CHUNKED
_LENGTH = Framing.LENGTH


class SendfileStalled(Exception):
    """The client read less than one sendfile slice within the stall timeout."""


class _Sent:
    # What h11 sees of bytes sendfile(2) wrote past it: h11 only needs their
    # number to check the declared Content-Length (its docs suggest exactly this).
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


#: Fields that passed ``field_lines``' checks and became plain lines, remembered:
#: a server sends the same few (Content-Type, Cache-Control ...) again and again,
#: and a set lookup costs a fraction of the two regular expressions. Bounded: once
#: full, new fields are checked every time, as before.
_VALID_LINES: set[tuple[bytes, bytes]] = set()
_VALID_LINES_MAX = 1024


def field_lines(
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Serialise response fields: ``(lines, connection fields)``.

    ``Connection`` fields are returned apart: h11 must see them to decide
    keep-alive. Every other field becomes a ``name: value`` line, checked as h11
    checks a field (RFC 9110 §5.1, §5.5), because a response's field list can
    still be changed after the response checked it.

    Raises:
        ValueError: a name that is not a token, a value h11 would refuse, or a
            framing field (``Content-Length``, ``Transfer-Encoding``: ours to set).
    """
    lines = []
    connection = []
    for field in headers:
        try:
            known = field in _VALID_LINES
        except (TypeError, ValueError):  # a list, a bytearray, a writable memoryview
            known = False
        if known:
            lines.append(b"%s: %s\r\n" % field)
            continue
        name, value = field
        if not FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"invalid response header field {name!r}: {value!r}")
        lower = name.lower()
        if lower in FRAMING_FIELDS:
            # A second length or coding next to h11's would desynchronise a proxy.
            raise ValueError(f"response header {name!r} is set by the server, not a handler")
        if lower == b"connection":
            connection.append((name, value))
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
        # Only a tuple of bytes is remembered: immutable, it stays what was checked.
        immutable = type(field) is tuple and type(name) is bytes and type(value) is bytes
        if immutable and len(_VALID_LINES) < _VALID_LINES_MAX:
            _VALID_LINES.add(field)
    return b"".join(lines), connection


def error_body(status: int, detail: str) -> bytes:
    """The plain-text body of an error response the server writes itself."""
    return f"{status} {PHRASES.get(status, b'Error').decode()}: {detail}\n".encode()


class ResponseWriter:
    """Writes one connection's responses, one at a time (see the module rules)."""

    __slots__ = (
        "_ctx",
        "_flow",
        "_flush_handle",
        "_h11",
        "_held",
        "_held_size",
        "_high",
        "_transport",
        "after_eof",
        "bytes_sent",
        "close_after",
        "compressor",
        "framing",
        "head_only",
        "head_sent",
        "last_write",
        "status",
        "track_time",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        h11_conn: h11.Connection,
        flow: FlowControl,
        ctx: ServerContext,
    ) -> None:
        self._transport = transport
        self._h11 = h11_conn
        self._flow = flow
        self._ctx = ctx
        # Small body writes held until the loop iteration ends (rule 4).
        self._held: list[bytes] | None = None
        self._held_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._high = ctx.config.write_high_water
        #: Called after each body write once the client sent EOF and the server
        #: honours half-closes: the connection then checks for a reset.
        self.after_eof: Callable[[], None] | None = None
        self.begin(head_only=False)

    def begin(self, *, head_only: bool) -> None:
        """A new response starts; ``head_only`` for a HEAD request (no body is sent)."""
        self.head_only = head_only
        #: Announce ``Connection: close`` in the head (the connection will not be
        #: reused: a refused body, a request that asked for it).
        self.close_after = False
        self.framing = Framing.NONE
        self.compressor: GzipStream | None = None
        self.status = 0
        self.head_sent = False
        self.bytes_sent = 0  # body bytes, before compression
        self.last_write = 0.0  # loop time of the last body write (for pings) ...
        self.track_time = False  # ... kept only while an event stream pings

    def use_parser(self, h11_conn: h11.Connection) -> None:
        """The connection replaced its h11 connection between two requests."""
        self._h11 = h11_conn

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def room(self) -> int:
        """Bytes the transport takes before it pauses us (a sync producer's batch)."""
        buffered = self._transport.get_write_buffer_size() + self._held_size
        return self._ctx.config.write_high_water - buffered

    # Heads

    def send_continue(self) -> None:
        """``100 Continue``, if the client waits for it and no response has started.

        RFC 9110 §10.1.1: a client that sent ``Expect: 100-continue`` may wait for
        this before sending the body.
        """
        if self._h11.they_are_waiting_for_100_continue and not self.head_sent:
            data = self._h11.send(h11.InformationalResponse(status_code=100, headers=[]))
            if data:
                self._send(data)

    def _head(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        framing: list[tuple[bytes, bytes]],
    ) -> bytes:
        """The head of a response: ``framing`` fields go to h11, ``headers`` are added here.

        Raises:
            ValueError: a field h11 would refuse (before anything is sent).
            h11.LocalProtocolError: h11 cannot send a response now.
        """
        lines, connection = field_lines(headers)
        if connection:
            framing = [*framing, *connection]
        if self.close_after or self._ctx.shutting_down.is_set():
            framing = [*framing, _CLOSE]
        data = self._h11.send(
            h11.Response(status_code=status, headers=framing, reason=PHRASES.get(status, b""))
        )
        assert data is not None and data.endswith(b"\r\n\r\n")
        # Only now: if h11 refused the head, nothing was sent and a 500 still can be.
        self.status = status
        self.head_sent = True
        # h11's head without its last CRLF, then our fields, then the CRLF.
        return b"".join((data[:-2], lines, self._ctx.common_lines(headers), b"\r\n"))

    def send_whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A complete response with a fixed body (``Content-Length`` added here).

        Raises:
            h11.LocalProtocolError: h11 cannot send a response now (one was sent).
        """
        framing = [] if status in NO_BODY_STATUSES else [(b"content-length", b"%d" % len(body))]
        if self._h11.their_state is h11.SEND_BODY:
            # Answered before the request body was read: it never will be, so the
            # connection cannot be reused; say so (RFC 9112 §9.6).
            self.close_after = True
        head = self._head(status, headers, framing)
        if body and not self.head_only:
            self._h11.send_with_data_passthrough(h11.Data(data=body))  # h11 counts
            if len(body) <= JOIN_LIMIT:
                self._send(head + body)
            else:
                self._send(head)
                self._send(body)
            self.bytes_sent = len(body)
        else:
            self._send(head)
        self._h11.send(h11.EndOfMessage())

    def send_error(
        self, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> int:
        """A plain-text error response; returns its body size.

        Raises:
            h11.LocalProtocolError: h11 cannot send a response now.
        """
        body = error_body(status, detail)
        fields = [(b"content-type", b"text/plain; charset=utf-8"), *(headers or ())]
        self.send_whole(status, fields, body)
        return len(body)

    def start_body(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        compressor: GzipStream | None = None,
    ) -> None:
        """Write the head of a streamed response and choose its framing, once."""
        fields = []
        if content_length is not None:
            fields = [(b"content-length", b"%d" % content_length)]
            framing = Framing.LENGTH
        elif self._h11.their_http_version == b"1.1":
            framing = Framing.CHUNKED  # h11 adds Transfer-Encoding: chunked
        else:
            framing = Framing.CLOSE  # h11 adds Connection: close
        self._send(self._head(status, headers, fields))
        if self.head_only or status in NO_BODY_STATUSES:
            self._h11.send(h11.EndOfMessage())
            return
        self.framing = framing
        self.compressor = compressor

    # Sending, and holding small body writes (rule 4)

    def _send(self, data: bytes) -> None:
        if self._held is not None:
            self.flush()
        self._transport.write(data)

    def _hold(self, data: bytes) -> None:
        held = self._held
        if held is None:
            held = self._held = []
            if self._flush_handle is None:
                self._flush_handle = self._ctx.loop.call_soon(self._flush_at_iteration_end)
        held.append(data)
        size = self._held_size = self._held_size + len(data)
        # Go now when this much is held, or when it would fill the transport: the
        # write then pauses the producer exactly as an unheld one would.
        if size >= HOLD_LIMIT or size + self._transport.get_write_buffer_size() >= self._high:
            self.flush()

    def _flush_at_iteration_end(self) -> None:
        self._flush_handle = None
        self.flush()

    def flush(self) -> None:
        """Write the held body bytes now (in one write), unless the client is gone."""
        held = self._held
        if held is None:
            return
        self._held = None
        self._held_size = 0
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    # Body

    def write(self, data: bytes, *, hold: bool = False) -> None:
        """Write body bytes: compress, frame, keep h11 in step, note the time.

        ``hold``: a small write may wait for the end of this loop iteration and
        leave with the writes made until then (the producer loop asks for it).

        Raises:
            h11.LocalProtocolError: more bytes than the declared Content-Length.
        """
        self.bytes_sent += len(data)
        if self.compressor is not None:
            data = self.compressor.compress(data)
        if not data:
            return  # an empty chunk would end a chunked body
        framing = self.framing
        if framing is _CHUNKED:
            data = encode_chunk(data)
        elif framing is _LENGTH:
            self._h11.send_with_data_passthrough(h11.Data(data=data))
        if hold and len(data) < HOLD_LIMIT and self.after_eof is None:
            self._hold(data)
        else:
            self._send(data)
        if self.track_time:
            self.last_write = self._ctx.loop.time()
        if self.after_eof is not None:
            self.after_eof()

    async def pump(
        self, source: AsyncIterator[Any], first: Any = NOTHING, pending: Any = None
    ) -> bool:
        """Write ``first`` (unless ``NOTHING``), then every item of ``source``.

        The next item is pulled only while the transport is not paused, so a slow
        client never makes us hold more than the high-water mark plus one chunk
        (small writes held for the end of the iteration go at once when they
        would reach the mark).
        ``pending`` is a pull of the first item still under way (an awaitable):
        awaited here. Returns False if the client went away first.
        """
        if pending is not None:
            try:
                first = await pending  # cancelling us cancels this pull too
            except StopAsyncIteration:
                return True
        transport = self._transport
        flow = self._flow
        write = self.write
        next_item = source.__anext__
        writes = 0
        while True:
            if first is NOTHING:
                try:
                    item = await next_item()
                except StopAsyncIteration:
                    return True
            else:
                item, first = first, NOTHING
            chunk = item if type(item) is bytes else to_bytes(item)
            if not chunk:
                continue  # an empty chunk would end a chunked body
            if transport.is_closing():
                return False
            write(chunk, hold=True)
            if flow.write_paused:
                writes = 0
                await flow.wait_writable()
                if transport.is_closing():
                    return False
            else:
                writes += 1
                if writes >= YIELD_EVERY:
                    writes = 0
                    await asyncio.sleep(0)

    async def sendfile(self, file: IO[bytes], offset: int, count: int) -> bool:
        """Send ``count`` bytes of ``file`` from ``offset`` with sendfile(2).

        Returns False if the client went away.

        Raises:
            SendfileStalled: the client stopped reading (nothing is written then).
            RuntimeError: the file shrank while it was being sent.
        """
        loop = self._ctx.loop
        stall = self._ctx.config.write_stall_timeout
        self.flush()
        while count:
            size = min(count, SENDFILE_SLICE)
            try:
                # A slice at a time, each within the stall timeout: sendfile waits
                # for the socket directly, so the transport's pause/stall machinery
                # never sees a client that stopped reading.
                sent = await asyncio.wait_for(
                    loop.sendfile(self._transport, file, offset, size, fallback=False), stall
                )
            except asyncio.TimeoutError:
                raise SendfileStalled from None
            except (ConnectionError, RuntimeError):
                # RuntimeError: the transport closed under us. asyncio stops reading
                # during sendfile, so a client that left shows up here.
                return False
            if sent == 0:
                raise RuntimeError("the file shrank while it was being sent")
            self._h11.send_with_data_passthrough(h11.Data(data=_Sent(sent)))  # type: ignore[arg-type]
            offset += sent
            count -= sent
            self.bytes_sent += sent
        return True

    def can_sendfile(self) -> bool:
        # sendfile(2) copies from the page cache straight to the socket; it cannot
        # encrypt, so TLS connections take the read-and-write path.
        return (
            self.framing is Framing.LENGTH
            and self._transport.get_extra_info("sslcontext") is None
            and hasattr(os, "sendfile")
        )

    def is_complete(self) -> bool:
        """The whole response has been written (h11 saw its end)."""
        return self._h11.our_state is h11.DONE or self._h11.our_state is h11.MUST_CLOSE

    def is_open(self) -> bool:
        """A body is being written and more of it may still go out."""
        return self._h11.our_state is h11.SEND_BODY and not self._transport.is_closing()

    def end(self) -> None:
        """End the body: the compressor's tail, then h11's end (the last chunk)."""
        if self.compressor is not None:
            tail, self.compressor = self.compressor.finish(), None
            sent = self.bytes_sent
            self.write(tail)
            self.bytes_sent = sent  # the gzip trailer is not payload
        data = self._h11.send(h11.EndOfMessage())
        if data:
            self._send(data)  # (the last chunk, after what is held)
        else:
            # A length-framed body has no end marker: what is held goes now, while
            # the response is still ours (a FIN read in this same iteration may
            # close the transport before the iteration's flush).
            self.flush()

    # Ending the connection

    def truncate(self, *, reset: bool = False) -> None:
        """End a body that cannot be finished: everything written, then a FIN.

        No last chunk (and fewer bytes than a declared length) tell the client
        the body is incomplete. A close-delimited body has no such sign: a reset
        is the only one. ``reset`` forces one (a client that does not read).
        """
        if reset or self.framing is Framing.CLOSE:
            self.reset()
        else:
            self.close()

    def close(self) -> None:
        """Close once what was written is flushed (a FIN)."""
        self.flush()
        self._transport.close()

    def shut_write(self) -> bool:
        """Send a FIN but keep reading (a lingering close); False if impossible."""
        if not self._transport.can_write_eof():
            return False
        self.flush()
        self._transport.write_eof()
        return True

    def reset(self) -> None:
        """Cut the connection off with a reset.

        A plain close with unsent data queued toward a client that does not read
        leaves the kernel an orphaned socket that keeps probing the zero window,
        holding its send buffer (megabytes) for minutes. SO_LINGER with a zero
        timeout makes close() reset the connection and free everything at once.
        """
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._held, self._held_size = None, 0  # nobody will read them
        self._transport.abort()
