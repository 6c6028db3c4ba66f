"""gzip that still streams: each chunk decodable on arrival; small bodies left alone."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import signal
import zlib
from collections.abc import AsyncIterator

import pytest

from tinystream import EventSourceResponse, Request, Response, StreamingResponse
from tinystream._compress import accepts_gzip
from tinystream.testing import serve_for_test

from . import processes

TIMEOUT = 5.0
BIG = "tinystream streams " * 100  # 1900 bytes: worth compressing


@pytest.mark.parametrize(
    ("values", "accepted"),
    [
        ([], False),
        (["gzip"], True),
        (["deflate, gzip;q=0.5"], True),
        (["gzip;q=0"], False),
        (["*"], True),
        (["*;q=0"], False),
        (["gzip;q=0, *"], False),  # an explicit refusal beats the wildcard
        (["br", "GZIP"], True),  # several fields; names are case-insensitive
        (["identity"], False),
        (["gzip;q=nonsense"], False),
    ],
)
def test_accept_encoding(values: list[str], accepted: bool) -> None:
    assert accepts_gzip(values) is accepted


async def fixed(request: Request) -> Response:
    body = BIG if request.path == "/big" else "small"
    return Response(body, compress=True)


async def test_fixed_bodies() -> None:
    async with serve_for_test(fixed) as client:
        zipped = await client.get("/big", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["vary"] == "Accept-Encoding"
        assert gzip.decompress(zipped.body) == BIG.encode()
        assert int(zipped.headers["content-length"]) == len(zipped.body) < len(BIG)
        head = await client.request("HEAD", "/big", headers={"Accept-Encoding": "gzip"})
        assert head.headers["content-length"] == zipped.headers["content-length"]
        plain = await client.get("/big")
        assert "content-encoding" not in plain.headers and plain.body == BIG.encode()
        assert plain.headers["vary"] == "Accept-Encoding"  # the answer depends on it
        small = await client.get("/small", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in small.headers and small.body == b"small"


async def test_each_compressed_chunk_decodes_before_the_next_exists() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def handler(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            while (part := await queue.get()) is not None:
                yield part

        return StreamingResponse(parts(), compress=True)

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/", headers={"Accept-Encoding": "gzip"}) as response:
            assert response.headers["content-encoding"] == "gzip"
            decoder = zlib.decompressobj(wbits=31)
            chunks = response.aiter_bytes()
            for i in range(3):
                part = (b"part %d " % i) * 20
                queue.put_nowait(part)  # the next is produced only after this one decoded
                decoded = b""
                while len(decoded) < len(part):
                    decoded += decoder.decompress(
                        await asyncio.wait_for(chunks.__anext__(), TIMEOUT)
                    )
                assert decoded == part
            queue.put_nowait(None)
            async for data in chunks:
                decoder.decompress(data)
            assert decoder.eof and response.complete  # a proper gzip trailer ended it


async def test_sse_with_curl_compressed() -> None:
    curl = shutil.which("curl")
    assert curl, "curl is installed by .ci/run"
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def handler(request: Request) -> EventSourceResponse:
        async def events() -> AsyncIterator[str]:
            while True:
                yield await queue.get()

        return EventSourceResponse(events(), compress=True, ping=None)

    async with serve_for_test(handler) as client:
        async with processes.running(
            curl,
            "-sN",
            "--compressed",
            "-D",
            "-",
            f"http://127.0.0.1:{client.port}/",
            stdout=asyncio.subprocess.PIPE,
            stop_signal=signal.SIGKILL,
        ) as process:
            assert process.stdout is not None
            queue.put_nowait("one")
            head = await asyncio.wait_for(process.stdout.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert b"content-encoding: gzip" in head.lower()
            assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT) == b"data: one\n"
            assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT) == b"\n"
            queue.put_nowait("two")  # produced only now
            assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT) == b"data: two\n"
