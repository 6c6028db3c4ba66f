"""Test endless streams for real: a server on a loopback port and a client that reads incrementally.

In-process test clients elsewhere call the application directly and buffer the
whole body, so they cannot test a stream that never ends, a slow reader, or a
client that vanishes. This one speaks HTTP/1.1 (parsed with h11) over a real
socket on 127.0.0.1::

    async with serve_for_test(handler) as client:
        response = await client.get("/")                 # whole body read
        async with client.stream("GET", "/events") as r:
            async for chunk in r.aiter_bytes():          # as it arrives
                ...
            r.abort()                                    # vanish (TCP reset)

``client.server`` is the running :class:`~tinystream.Server` (``stats()``).
Several requests on one connection: ``async with client.connection() as conn``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import h11

from .datastructures import Headers
from .serving import Server, start_server
from .sse import MAX_EVENT_SIZE, EventStreamDecoder, ServerSentEvent

__all__ = ["ClientConnection", "StreamResponse", "TestClient", "TestResponse", "serve_for_test"]

#: Default bound on any single wait of the client, so a broken server fails a
#: test instead of hanging it.
TIMEOUT = 10.0  # seconds
READ_SIZE = 64 * 1024  # bytes


class TestResponse:
    """A response read to its end."""

    __test__ = False  # not a pytest test class

    def __init__(self, status: int, headers: Headers, body: bytes, http_version: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.http_version = http_version

    @property
    def text(self) -> str:
        """The body decoded as UTF-8.

        Raises:
            UnicodeDecodeError: the body is not UTF-8.
        """
        return self.body.decode("utf-8")

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: the body is not JSON.
        """
        import json

        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<TestResponse {self.status} {len(self.body)} bytes>"


class StreamResponse:
    """A response whose body is read as it arrives.

    ``complete`` becomes True when the body ended properly (the last chunk, or
    the declared length); a body cut short leaves it False.
    """

    def __init__(self, conn: ClientConnection, event: h11.Response) -> None:
        self._conn = conn
        self.status = event.status_code
        self.headers = Headers(list(event.headers))
        self.http_version = event.http_version.decode("ascii")
        self.complete = False
        self.ended = False  # no more body will come (complete or cut short)
        self.decoder: EventStreamDecoder | None = None

    async def aiter_bytes(self, read_size: int = READ_SIZE) -> AsyncIterator[bytes]:
        """The decoded body, piece by piece. ``read_size`` bounds each socket read."""
        while not self.ended:
            event = await self._conn._next_event(read_size)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                self.ended = True
            elif event is None:
                self.ended = True  # connection closed or broken mid-body

    async def aiter_events(
        self, max_event_size: int = MAX_EVENT_SIZE
    ) -> AsyncIterator[ServerSentEvent]:
        """Server-Sent Events, each as soon as its last byte arrives.

        ``self.decoder`` keeps the stream state (``last_event_id``, ``retry``).
        """
        self.decoder = EventStreamDecoder(max_event_size)
        async for chunk in self.aiter_bytes():
            for event in self.decoder.feed(chunk):
                yield event

    async def aiter_raw(self, read_size: int = READ_SIZE) -> AsyncIterator[bytes]:
        """The body bytes exactly as they came off the socket, framing included.

        Parsing stops; use this instead of :meth:`aiter_bytes`, not after it.
        Ends when the server closes the connection or ``timeout`` passes.
        """
        for piece in self._conn._take_unparsed():
            yield piece
        while True:
            data = await self._conn._read(read_size)
            if not data:
                return
            yield data

    async def read(self) -> bytes:
        """The rest of the body."""
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    @property
    def was_reset(self) -> bool:
        """The server ended the connection with a reset instead of a FIN."""
        return self._conn.was_reset

    def abort(self) -> None:
        """Vanish: close the socket with a TCP reset, as a crashed client would."""
        self._conn.abort()

    async def close(self) -> None:
        """Close the connection normally (FIN), mid-body or not."""
        await self._conn.close()

    def shutdown_write(self) -> None:
        """Half-close: tell the server we will send nothing more, keep reading."""
        self._conn.shutdown_write()


class ClientConnection:
    """One HTTP/1.1 connection to the server; requests on it run one after another."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._h11 = h11.Connection(h11.CLIENT)
        self._host = "127.0.0.1"
        #: The server ended the connection with a reset (not a FIN): bytes it
        #: sent that we had not read yet may have been discarded.
        self.was_reset = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = TIMEOUT,
        recv_buffer: int | None = None,
    ) -> ClientConnection:
        """Connect. ``recv_buffer`` shrinks the socket's receive buffer (for slow-reader tests)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer is not None:
            # Must be set before connecting for the TCP window to honour it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        limit = recv_buffer if recv_buffer is not None else READ_SIZE
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        return cls(reader, writer, timeout)

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are, bypassing the HTTP layer."""
        self._writer.write(data)
        await self._writer.drain()

    async def read_raw(self, size: int = READ_SIZE) -> bytes:
        """The next bytes from the socket, unparsed (``b""`` once the server closed)."""
        pending = self._take_unparsed()
        if pending:
            self._h11 = h11.Connection(h11.CLIENT)  # raw mode: drop the parser's copy
            return pending[0]
        return await self._read(size)

    async def read_raw_until_close(self, limit: int = 1 << 24) -> bytes:
        """Every byte the server sends until it closes the connection."""
        chunks = [piece for piece in self._take_unparsed()]
        total = sum(map(len, chunks))
        while total < limit:
            data = await self._read(READ_SIZE)
            if not data:
                break
            chunks.append(data)
            total += len(data)
        return b"".join(chunks)

    def _take_unparsed(self) -> list[bytes]:
        data, _ = self._h11.trailing_data
        return [data] if data else []

    async def _read(self, size: int) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.read(size), self._timeout)
        except ConnectionResetError:
            self.was_reset = True
            return b""
        except (ConnectionError, OSError):
            return b""

    async def _next_event(self, read_size: int = READ_SIZE) -> Any:
        """The next h11 event; None when the connection ended (or broke) first."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                return None
            if event is h11.NEED_DATA:
                self._h11.receive_data(await self._read(read_size))
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            return event

    async def start(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        http_version: str = "1.1",
    ) -> StreamResponse:
        """Send a request and read up to the response head (1xx responses skipped).

        ``body`` as bytes is sent with Content-Length; as an iterable of bytes,
        chunked (HTTP/1.1 only).
        """
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        fields = list(headers.items() if isinstance(headers, Mapping) else (headers or []))
        names = {name.lower() for name, _ in fields}
        if "host" not in names:
            fields.append(("Host", self._host))
        chunks: Iterable[bytes] = ()
        if isinstance(body, (bytes, bytearray)):
            if "content-length" not in names:
                fields.append(("Content-Length", str(len(body))))
            chunks = [bytes(body)] if body else []
        elif body is not None:
            fields.append(("Transfer-Encoding", "chunked"))
            chunks = body
        if http_version == "1.0" and body is not None and not isinstance(body, (bytes, bytearray)):
            raise ValueError("HTTP/1.0 has no chunked request bodies")
        head = self._h11.send(h11.Request(method=method, target=path, headers=fields)) or b""
        if http_version != "1.1":
            # h11 only sends HTTP/1.1; the version on the request line is all that
            # differs, and h11 reads the response the same either way.
            line_end = head.index(b"\r\n")
            version = f"HTTP/{http_version}".encode()
            head = head[:line_end].replace(b"HTTP/1.1", version) + head[line_end:]
        self._writer.write(head)
        expect_continue = "expect" in names
        if not expect_continue:
            for chunk in chunks:
                self._writer.write(self._h11.send(h11.Data(data=chunk)) or b"")
            self._writer.write(self._h11.send(h11.EndOfMessage()) or b"")
        await self._writer.drain()
        while True:
            event = await self._next_event()
            if event is None:
                raise ConnectionError("connection closed before a response arrived")
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 100 and expect_continue:
                    for chunk in chunks:
                        self._writer.write(self._h11.send(h11.Data(data=chunk)) or b"")
                    self._writer.write(self._h11.send(h11.EndOfMessage()) or b"")
                    await self._writer.drain()
                continue
            assert isinstance(event, h11.Response)
            return StreamResponse(self, event)

    async def request(self, method: str, path: str, **kwargs: Any) -> TestResponse:
        """Send a request and read the whole response."""
        response = await self.start(method, path, **kwargs)
        body = await response.read()
        if not response.complete:
            raise ConnectionError(f"response body cut short after {len(body)} bytes")
        return TestResponse(response.status, response.headers, body, response.http_version)

    @property
    def reusable(self) -> bool:
        """True when the server kept the connection open for another request."""
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    def shutdown_write(self) -> None:
        """Half-close: send a FIN, keep reading (the server sees EOF)."""
        if self._writer.can_write_eof():
            self._writer.write_eof()

    def abort(self) -> None:
        """Vanish: close the socket with a TCP reset, as a crashed client would."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()

    async def close(self) -> None:
        """Close the connection normally (a FIN), mid-response or not."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> ClientConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class TestClient:
    """Makes requests to one test server, each on a new connection unless told otherwise."""

    __test__ = False

    def __init__(self, server: Server, timeout: float = TIMEOUT) -> None:
        assert server.port is not None, "serve_for_test listens on TCP"
        self.server = server
        self.port = server.port
        self.timeout = timeout

    async def connect(self, *, recv_buffer: int | None = None) -> ClientConnection:
        """A new connection, open until you close it."""
        return await ClientConnection.open(
            "127.0.0.1", self.port, timeout=self.timeout, recv_buffer=recv_buffer
        )

    def connection(
        self, *, recv_buffer: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[ClientConnection]:
        """``async with client.connection() as conn``: several requests on one socket."""

        @contextlib.asynccontextmanager
        async def manage() -> AsyncIterator[ClientConnection]:
            conn = await self.connect(recv_buffer=recv_buffer)
            try:
                yield conn
            finally:
                await conn.close()

        return manage()

    async def request(self, method: str, path: str, **kwargs: Any) -> TestResponse:
        """Send a request on a new connection and read the whole response.

        ``kwargs`` are those of :meth:`ClientConnection.start` (``headers``,
        ``body``, ``http_version``).

        Raises:
            ConnectionError: the connection closed before the response ended.
        """
        async with self.connection() as conn:
            return await conn.request(method, path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> TestResponse:
        """``request("GET", path, ...)``."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> TestResponse:
        """``request("POST", path, ...)``."""
        return await self.request("POST", path, **kwargs)

    def stream(
        self, method: str, path: str, *, recv_buffer: int | None = None, **kwargs: Any
    ) -> contextlib.AbstractAsyncContextManager[StreamResponse]:
        """``async with client.stream("GET", "/x") as r``: read the body as it arrives."""

        @contextlib.asynccontextmanager
        async def manage() -> AsyncIterator[StreamResponse]:
            conn = await self.connect(recv_buffer=recv_buffer)
            try:
                yield await conn.start(method, path, **kwargs)
            finally:
                await conn.close()

        return manage()


@contextlib.asynccontextmanager
async def serve_for_test(handler: Any, **options: Any) -> AsyncIterator[TestClient]:
    """Run ``handler`` on a free loopback port for the ``async with`` block.

    The server is shut down gracefully at the end of the block.

    Args:
        handler: the handler (or Router) to serve.
        options: :func:`~tinystream.start_server` options (``write_stall_timeout=0.5`` ...).

    Returns:
        An async context manager giving a :class:`TestClient`; ``client.server``
        is the running :class:`~tinystream.Server`.

    Raises:
        TypeError / ValueError: a bad option, as :func:`~tinystream.start_server`.
    """
    server = await start_server(handler, "127.0.0.1", 0, **options)
    try:
        yield TestClient(server)
    finally:
        await server.close()
