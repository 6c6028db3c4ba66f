"""A client that leaves - with a FIN, as browsers, curl and httpx do, or with a reset -
stops its handler and producer at once, for every kind of response, idle or busy."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tinystream import (
    EventSourceResponse,
    FileResponse,
    NDJSONResponse,
    Request,
    Response,
    StreamingResponse,
)
from tinystream.testing import serve_for_test

from .helpers import parse_responses, wait

TIMEOUT = 5.0


class Leaving:
    """What one request went through: its producer's end, and what the request saw."""

    def __init__(self) -> None:
        self.first_sent = asyncio.Event()
        self.finished = asyncio.Event()  # the producer's (or handler's) finally ran
        self.noticed = asyncio.Event()  # request.wait_disconnected() returned
        self.loop = asyncio.get_running_loop()
        self.finished_at = 0.0
        self.watchers: set[asyncio.Task[None]] = set()

    def finish(self) -> None:
        self.finished_at = self.loop.time()
        self.finished.set()

    def watch(self, request: Request) -> None:
        async def watcher() -> None:
            await request.wait_disconnected()
            assert request.is_disconnected()
            self.noticed.set()

        task = asyncio.ensure_future(watcher())
        self.watchers.add(task)
        task.add_done_callback(self.watchers.discard)

    # Producers: one item, then waiting for ever (idle) or never awaiting (busy).

    async def idle_bytes(self) -> AsyncIterator[bytes]:
        try:
            yield b"first\n"
            await asyncio.Event().wait()
        finally:
            self.finish()

    async def idle_items(self) -> AsyncIterator[dict[str, str]]:
        try:
            yield {"data": "1"}  # an SSE event, or a JSON document
            await asyncio.Event().wait()
        finally:
            self.finish()

    async def busy_bytes(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"b" * 4096  # never awaits anything
        finally:
            self.finish()


def plain_idle(leaving: Leaving, request: Request, tmp_path: Path) -> Any:
    return StreamingResponse(leaving.idle_bytes())


def plain_busy(leaving: Leaving, request: Request, tmp_path: Path) -> Any:
    return StreamingResponse(leaving.busy_bytes())


def ndjson_idle(leaving: Leaving, request: Request, tmp_path: Path) -> Any:
    return NDJSONResponse(leaving.idle_items())


def events_idle(leaving: Leaving, request: Request, tmp_path: Path) -> Any:
    return EventSourceResponse(leaving.idle_items(), ping=None)


def file_busy(leaving: Leaving, request: Request, tmp_path: Path) -> Any:
    # A file far larger than the socket buffers: sendfile(2) is mid-way when we leave.
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.truncate(64 * 1024 * 1024)

    class Watched(FileResponse):
        def close(self) -> None:
            super().close()
            leaving.finish()

    return Watched(path)


async def handler_still_computing(leaving: Leaving, request: Request, tmp_path: Path) -> Any:
    try:
        leaving.first_sent.set()
        await asyncio.Event().wait()  # e.g. waiting for a model's first token
    finally:
        leaving.finish()
    return Response("never sent")


KINDS: dict[str, Callable[[Leaving, Request, Path], Any]] = {
    "plain-idle": plain_idle,
    "plain-busy": plain_busy,
    "ndjson-idle": ndjson_idle,
    "events-idle": events_idle,
    "file-busy": file_busy,
    "handler-computing": handler_still_computing,
}


@pytest.mark.parametrize("how", ["fin", "reset"])
@pytest.mark.parametrize("kind", list(KINDS))
async def test_client_leaving_closes_the_producer_at_once(
    kind: str, how: str, tmp_path: Path
) -> None:
    leaving = Leaving()

    async def handler(request: Request) -> Any:
        leaving.watch(request)
        response = KINDS[kind](leaving, request, tmp_path)
        if isinstance(response, Awaitable):
            return await response
        return response

    async with serve_for_test(handler) as client:
        conn = await client.connect(recv_buffer=16384)
        await conn.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        if kind == "handler-computing":
            await wait(leaving.first_sent)
        else:
            assert (await conn.read_raw()).startswith(b"HTTP/1.1 200 OK\r\n")
        left_at = asyncio.get_running_loop().time()
        if how == "fin":
            await conn.close()
        else:
            conn.abort()
        # Nothing is ever written again to an idle stream, so only the FIN (or
        # reset) itself can have ended it - well before the server shuts down at
        # the end of this block.
        await wait(leaving.finished)
        await wait(leaving.noticed)
        stats = await client.server.wait_stats(
            lambda s: s.connections == 0 and s.streams == 0, TIMEOUT
        )
        assert stats.outcomes == {"client_gone": 1}
        # Loopback: the close reaches the producer in well under a second even on
        # a loaded machine (scripts/bench.py measures the milliseconds).
        assert leaving.finished_at - left_at < 1.0


async def test_a_sync_iterator_blocked_in_next_is_closed_once_next_returns() -> None:
    """A FIN frees the request at once; the blocked ``next()`` cannot be interrupted."""
    release = threading.Event()
    closed = threading.Event()
    noticed = asyncio.Event()
    watchers = set()

    def blocking() -> Iterator[bytes]:
        try:
            yield b"first\n"
            release.wait(TIMEOUT)
            yield b"second\n"
        finally:
            closed.set()

    async def handler(request: Request) -> StreamingResponse:
        async def watch() -> None:
            await request.wait_disconnected()
            noticed.set()

        watchers.add(asyncio.ensure_future(watch()))
        return StreamingResponse(blocking())

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/") as response:
            async for data in response.aiter_bytes():
                assert data == b"first\n"
                break
            await response.close()
            await wait(noticed)
            await client.server.wait_stats(lambda s: s.streams == 0, TIMEOUT)
        release.set()
        assert await asyncio.to_thread(closed.wait, TIMEOUT)


async def test_a_fixed_response_ready_before_the_fin_is_delivered() -> None:
    """Request and FIN in one go (``printf ... | nc -N``): what was ready still arrives."""

    async def handler(request: Request) -> Response:
        return Response("ready\n")

    async with serve_for_test(handler) as client:
        conn = await client.connect()
        await conn.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        conn.shutdown_write()
        [response] = parse_responses(await conn.read_raw_until_close())
        assert response["status"] == 200 and response["body"] == b"ready\n"
        assert not conn.was_reset
        await conn.close()


async def test_a_fin_after_the_whole_response_is_no_departure() -> None:
    """The body was complete: the log says so and the producer's closing is not cut."""
    cleaned = asyncio.Event()

    class Once:
        def __init__(self) -> None:
            self.sent = False

        def __aiter__(self) -> Once:
            return self

        async def __anext__(self) -> bytes:
            if self.sent:
                raise StopAsyncIteration
            self.sent = True
            return b"all\n"

        async def aclose(self) -> None:
            await asyncio.sleep(0.05)  # a cleanup that awaits (closing a cursor...)
            cleaned.set()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(Once())

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/") as response:
            assert await response.read() == b"all\n" and response.complete
            await response.close()  # a FIN, perhaps while aclose() still awaits
        await wait(cleaned)
        stats = await client.server.wait_stats(
            lambda s: s.connections == 0 and s.requests_served == 1, TIMEOUT
        )
        assert stats.outcomes == {"complete": 1}


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_leaving_while_the_head_waits_for_the_first_item(how: str) -> None:
    """The pull of the first item is stopped, then the producer closed."""
    pulled = asyncio.Event()
    closed = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        try:
            pulled.set()
            await asyncio.Event().wait()
            yield b"never"
        finally:
            closed.set()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(slow())

    async with serve_for_test(handler, first_item_wait=60) as client:
        conn = await client.connect()
        await conn.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await wait(pulled)
        if how == "fin":
            await conn.close()
        else:
            conn.abort()
        await wait(closed)
        # The connection goes at once; the exchange ends when its cancelled pull has.
        stats = await client.server.wait_stats(
            lambda s: s.connections == 0 and s.requests_served == 1, TIMEOUT
        )
        assert stats.outcomes == {"client_gone": 1}


async def test_a_producer_whose_closing_raises_is_logged_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def __aiter__(self) -> Broken:
            return self

        async def __anext__(self) -> bytes:
            return b"x" * 1024

        async def aclose(self) -> None:
            raise RuntimeError("cursor already gone")

    async def handler(request: Request) -> Response | StreamingResponse:
        if request.path == "/other":
            return Response("fine\n")
        return StreamingResponse(Broken())

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/") as response:
            async for _ in response.aiter_bytes():
                break
            response.abort()
        await client.server.wait_stats(lambda s: s.streams == 0, TIMEOUT)
        assert (await client.get("/other")).body == b"fine\n"
    assert any("closing a streaming producer raised" in r.getMessage() for r in caplog.records)
