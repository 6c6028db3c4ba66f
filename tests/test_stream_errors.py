"""Producers that fail: before their first item the client gets the real status;
after it, everything sent is delivered and the body ends truncated, with a FIN."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tinystream import (
    EventSourceResponse,
    HTTPError,
    NDJSONResponse,
    Request,
    StreamingResponse,
)
from tinystream.testing import serve_for_test

TIMEOUT = 5.0


async def fails_at_once(exc: Exception) -> AsyncIterator[Any]:
    raise exc
    yield b"never"  # an async generator that raises on its first pull


def fails_at_once_sync(exc: Exception) -> Iterator[Any]:
    raise exc
    yield b"never"


def build(kind: str, items: Any) -> StreamingResponse:
    if kind == "events":
        return EventSourceResponse(items, ping=None, retry=1000)
    if kind == "ndjson":
        return NDJSONResponse(items)
    return StreamingResponse(items)


KINDS = ["plain", "ndjson", "events"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_http_error_before_the_first_item_answers_with_its_status(
    kind: str, sync: bool
) -> None:
    error = HTTPError(404, "no such room", headers={"X-Room": "7"})

    async def handler(request: Request) -> StreamingResponse:
        return build(kind, fails_at_once_sync(error) if sync else fails_at_once(error))

    async with serve_for_test(handler) as client, client.connection() as conn:
        response = await conn.request("GET", "/")
        assert response.status == 404
        assert response.body == b"no such room\n"
        assert response.headers["x-room"] == "7"
        assert conn.reusable  # a whole response: the connection is kept


@pytest.mark.parametrize("kind", KINDS)
async def test_other_error_before_the_first_item_is_a_plain_500(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> StreamingResponse:
        return build(kind, fails_at_once(RuntimeError("secret internal detail")))

    async with serve_for_test(handler) as client:
        response = await client.get("/broken")
        assert response.status == 500
        assert b"secret" not in response.body
        assert b"event:" not in response.body  # no stream-error event: nothing started
        stats = await client.server.wait_stats(lambda s: s.outcomes.get("error") == 1, TIMEOUT)
        assert stats.outcomes == {"error": 1}
    assert any("/broken" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_slow_first_item_gets_its_head_out_at_the_bound() -> None:
    """Waiting for the first item never holds the head back longer than the bound."""
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        await release.wait()
        yield b"late\n"

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(slow())

    async with (
        serve_for_test(handler, first_item_wait=0.05) as client,
        client.stream("GET", "/") as response,
    ):
        # The head arrived (client.stream returned) although no item exists yet.
        assert response.status == 200 and not release.is_set()
        release.set()
        assert await response.read() == b"late\n"
        assert response.complete


async def test_a_slow_first_item_that_fails_truncates() -> None:
    release = asyncio.Event()

    async def slow_then_fail() -> AsyncIterator[bytes]:
        await release.wait()
        raise HTTPError(404)
        yield b"never"

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(slow_then_fail())

    async with (
        serve_for_test(handler, first_item_wait=0.05) as client,
        client.stream("GET", "/") as response,
    ):
        assert response.status == 200  # too late for a status: the head was out
        release.set()
        assert await response.read() == b""
        assert not response.complete and not response.was_reset


async def test_first_item_wait_zero_sends_the_head_at_once() -> None:
    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(fails_at_once(HTTPError(404)))

    async with (
        serve_for_test(handler, first_item_wait=0) as client,
        client.stream("GET", "/") as response,
    ):
        assert response.status == 200  # the head went before the producer was pulled
        assert await response.read() == b""
        assert not response.complete


async def test_an_empty_stream_is_a_complete_empty_body() -> None:
    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(nothing())

    async with serve_for_test(handler) as client, client.connection() as conn:
        response = await conn.request("GET", "/")
        assert response.status == 200 and response.body == b""
        assert conn.reusable


@pytest.mark.parametrize("how", ["async", "sync"])
async def test_failure_mid_body_delivers_everything_sent_then_a_clean_end(how: str) -> None:
    """No reset: a reset lets the client's kernel drop bytes the client had not read."""
    piece = b"p" * 16384
    pieces = 64  # 1 MiB: far more than the socket buffers hold while the client waits

    async def failing_async() -> AsyncIterator[bytes]:
        for _ in range(pieces):
            yield piece
        raise RuntimeError("producer broke")

    def failing_sync() -> Iterator[bytes]:
        for _ in range(pieces):
            yield piece
        raise RuntimeError("producer broke")

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(failing_async() if how == "async" else failing_sync())

    async with serve_for_test(handler) as client:
        async with (
            _log_watch(logging.getLogger("tinystream.error"), "response failed") as failed,
            client.stream("GET", "/", recv_buffer=16384) as response,
        ):
            # Let the failure happen while most of the body still sits unread in
            # the buffers between us, then read it all.
            await asyncio.wait_for(failed.wait(), TIMEOUT)
            body = await response.read()
            assert body == piece * pieces
            assert not response.complete  # truncated: never a fake complete body
            assert not response.was_reset  # ended with a FIN


async def test_event_stream_failure_after_the_first_event_sends_stream_error() -> None:
    async def events() -> AsyncIterator[str]:
        yield "one"
        raise RuntimeError("boom")

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(events(), ping=None)

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        assert response.status == 200
        received = [(e.event, e.data) async for e in response.aiter_events()]
        assert received == [(None, "one"), ("stream-error", "")]
        assert response.complete
        # Ended cleanly, but it failed: the access log says so (not "complete").
        stats = await client.server.wait_stats(lambda s: s.outcomes.get("error") == 1, TIMEOUT)
        assert stats.outcomes == {"error": 1}


@contextlib.asynccontextmanager
async def _log_watch(logger: logging.Logger, text: str) -> AsyncIterator[asyncio.Event]:
    """An event set when ``logger`` emits a record containing ``text``."""
    seen = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                loop.call_soon_threadsafe(seen.set)

    watch = Watch()
    logger.addHandler(watch)
    try:
        yield seen
    finally:
        logger.removeHandler(watch)


async def test_a_first_item_still_pending_at_shutdown_is_stopped_and_closed() -> None:
    """The pull outlives the response (the server stops): the producer still closes."""
    closed = asyncio.Event()
    pulled = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        try:
            pulled.set()
            await asyncio.Event().wait()
            yield "never"
        finally:
            closed.set()

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(slow(), ping=None)

    async with serve_for_test(handler, first_item_wait=0.5) as client:
        conn = await client.connect()
        await conn.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(pulled.wait(), TIMEOUT)
        # The server stops while the head still waits for the first item: at the
        # bound the head goes, with the shutdown event, and the pull is abandoned.
        stopping = asyncio.ensure_future(client.server.close())
        raw = await conn.read_raw_until_close()
        assert b"event: shutdown" in raw
        await asyncio.wait_for(stopping, TIMEOUT)
        await asyncio.wait_for(closed.wait(), TIMEOUT)
        await conn.close()
