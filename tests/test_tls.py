"""HTTPS through the embedding API: streams, events and files over TLS; stuck handshakes cut off."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import tinystream
from tinystream import EventSourceResponse, FileResponse, Request, Response, StreamingResponse
from tinystream.sse import EventStreamDecoder

from .helpers import make_certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


async def app(request: Request) -> Response | StreamingResponse:
    if request.path == "/stream":

        async def parts() -> AsyncIterator[bytes]:
            for i in range(50):
                yield b"part %d\n" % i

        return StreamingResponse(parts())
    if request.path == "/events":
        return EventSourceResponse(iter(["one", "two"]), ping=None)
    if request.path == "/file":
        return FileResponse(request.query_params["path"])
    return Response("secure")


async def https_get(port: int, cafile: Path, target: str) -> tuple[bytes, bytes]:
    context = ssl.create_default_context(cafile=str(cafile))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def unchunk(body: bytes) -> bytes:
    from tinystream.chunked import ChunkedDecoder

    decoder = ChunkedDecoder()
    data = decoder.feed(body)
    assert decoder.done
    return data


async def test_streams_events_and_files_over_tls(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    payload = bytes(range(256)) * 2000
    (tmp_path / "f.bin").write_bytes(payload)
    server = await tinystream.start_server(app, port=0, certfile=str(cert), keyfile=str(key))
    try:
        assert server.url.startswith("https://")
        assert server.port is not None
        head, body = await https_get(server.port, cert, "/")
        assert head.startswith(b"HTTP/1.1 200") and body == b"secure"
        head, body = await https_get(server.port, cert, "/stream")
        assert b"chunked" in head and unchunk(body) == b"".join(b"part %d\n" % i for i in range(50))
        head, body = await https_get(server.port, cert, "/events")
        events = EventStreamDecoder().feed(unchunk(body))
        assert [e.data for e in events] == ["one", "two"]
        # Over TLS sendfile(2) cannot encrypt: the file goes out by reads, intact.
        head, body = await https_get(server.port, cert, f"/file?path={tmp_path / 'f.bin'}")
        assert head.startswith(b"HTTP/1.1 200") and body == payload
    finally:
        await server.close()


async def test_a_client_that_never_finishes_its_handshake_is_cut_off(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server = await tinystream.start_server(
        app, port=0, certfile=str(cert), keyfile=str(key), header_timeout=0.5
    )
    try:
        assert server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x16\x03\x01\x00\xff")  # the start of a ClientHello, then nothing
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the server gave up on us
        assert time.monotonic() - started < 0.5 + 2
        writer.close()
    finally:
        await server.close()
