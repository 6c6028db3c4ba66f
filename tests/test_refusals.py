"""Real sockets on 127.0.0.1: strict reading verdicts, and what a refusal costs us."""

from __future__ import annotations

import asyncio
import socket

import h11
import pytest

from tinystream import Request, Response
from tinystream.server import LINGER_MAX_BYTES
from tinystream.testing import serve_for_test

TIMEOUT = 5.0
BUFFER = 64 * 1024  # socket buffers on both sides: small, so the kernels hold little


async def hello(request: Request) -> Response:
    return Response("hello\n")


def small_receive_buffer_listener() -> socket.socket:
    # Linux copies SO_RCVBUF from the listener to accepted sockets.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    sock.bind(("127.0.0.1", 0))
    return sock


async def open_raw(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    sock.setblocking(False)
    await asyncio.wait_for(
        asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), TIMEOUT
    )
    return sock


async def read_until_close(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    try:
        while data := await loop.sock_recv(sock, 65536):
            chunks.append(data)
    except ConnectionResetError:
        pass  # the reset that ends the lingering close; what came before counts
    return b"".join(chunks)


def statuses(data: bytes) -> list[int]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("Host", "a")]))
    client.receive_data(data)
    found = []
    while isinstance(event := client.next_event(), h11.Response | h11.Data):
        if isinstance(event, h11.Response):
            found.append(event.status_code)
    return found


async def test_lingering_close_after_a_refusal_drains_a_bounded_amount() -> None:
    """A refused 1 GiB upload is read and dropped only up to LINGER_MAX_BYTES, then reset.

    The client writes as fast as it can and reads at the same time, as curl and
    browsers do: it reads the 413, and its writes fail soon after. Before the byte
    bound the server read and dropped for the whole 2 s linger (gigabytes here).
    """
    loop = asyncio.get_running_loop()
    async with serve_for_test(
        hello, sock=small_receive_buffer_listener(), max_body_size=1000
    ) as client:
        sock = await open_raw(client.port)
        try:
            await loop.sock_sendall(
                sock, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (1 << 30)
            )
            answer = asyncio.ensure_future(read_until_close(sock))
            sent = 0

            async def blast() -> bool:
                nonlocal sent
                chunk = b"x" * 65536
                try:
                    while sent < 1 << 30:
                        await loop.sock_sendall(sock, chunk)
                        sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return True
                return False

            assert await asyncio.wait_for(blast(), TIMEOUT), "the whole 1 GiB was drained"
            assert statuses(await asyncio.wait_for(answer, TIMEOUT)) == [413]
            # What the server drained, plus what both kernels buffered (two small
            # buffers) and one read of asyncio's (256 KiB) past the bound.
            assert sent < LINGER_MAX_BYTES + 1024 * 1024, sent
        finally:
            sock.close()
        assert (await client.get("/")).status == 200


async def test_empty_lines_then_silence_end_like_an_idle_connection() -> None:
    """RFC 9112 §2.2 empty lines are ignored, and they do not keep a connection open."""
    async with serve_for_test(hello, keep_alive_timeout=0.3) as client:
        async with client.connection() as conn:
            await conn.send_raw(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n")
            assert statuses(await conn.read_raw()) == [200]
            await conn.send_raw(b"\r\n")
            # Closed at the idle deadline, without a 408 the client never asked for.
            assert await asyncio.wait_for(conn.read_raw_until_close(), TIMEOUT) == b""


# llhttp's verdicts, over a real socket: each request ends the connection, so the
# answer is everything read until the close.
CLOSE = b"Connection: close\r\n"
STRICT_VERDICTS = {
    # RFC 9112 §9.6: serve a closing request, drop what follows (h11: 400).
    "HTTP/1.0 then a stray CRLF": (b"GET / HTTP/1.0\r\n\r\n\r\n", 200),
    # RFC 9112 §2.2: ignore empty lines before a request line (h11: 400).
    "CRLF before the request line": (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n", 200),
    # Bare LF ends a field line for h11, not for a CRLF-only proxy (h11: served).
    "bare LF between field lines": (
        b"POST / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    # Chunk-size lines llhttp refuses (h11: served).
    "nothing after ';'": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nhi\r\n0\r\n\r\n",
        400,
    ),
    "unclosed quoted string": (
        b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;a="b\r\nhi\r\n0\r\n\r\n',
        400,
    ),
    "whitespace after the size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9112 §3.2: no fragment in a request target (was served after a query).
    "fragment after the query": (b"GET /a?b=1#c HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n", 400),
}


@pytest.mark.parametrize("name", sorted(STRICT_VERDICTS))
async def test_strict_verdicts_over_a_socket(name: str) -> None:
    data, status = STRICT_VERDICTS[name]
    async with serve_for_test(hello) as client:
        async with client.connection() as conn:
            await conn.send_raw(data)
            answer = await asyncio.wait_for(conn.read_raw_until_close(), TIMEOUT)
        assert statuses(answer) == [status]
        assert b"connection: close" in answer.lower()
        assert (await client.get("/")).status == 200  # and the next client is served
