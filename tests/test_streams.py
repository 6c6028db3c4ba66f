"""EventSourceResponse, NDJSONResponse and negotiate_stream over real sockets, with real clients."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import signal
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tinystream import (
    EventSourceResponse,
    HTTPError,
    NDJSONResponse,
    Request,
    Response,
    ServerSentEvent,
    negotiate_stream,
)
from tinystream.streams import wants_event_stream
from tinystream.testing import serve_for_test

from . import processes
from .helpers import wait

TIMEOUT = 5.0


class Gate:
    """Lets a test release a producer's events one at a time."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def events(self) -> AsyncIterator[object]:
        try:
            while True:
                item = await self.queue.get()
                if item is StopAsyncIteration:
                    return
                yield item
        finally:
            self.closed.set()


async def test_headers_go_out_at_once_with_the_sse_fields() -> None:
    gate = Gate()

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(gate.events())

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        # The head arrived although the producer has not yielded anything.
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "connection" not in response.headers  # never Connection: keep-alive
        gate.queue.put_nowait("first")
        async for event in response.aiter_events():
            assert event == ServerSentEvent("first")
            break


async def test_event_kinds_retry_first_and_a_clean_end() -> None:
    async def handler(request: Request) -> EventSourceResponse:
        async def events() -> AsyncIterator[object]:
            yield "plain"
            yield {"data": "from a dict", "event": "named", "id": "2"}
            yield ServerSentEvent(data="line 1\nline 2", id="3")
            yield ServerSentEvent(data="unicode: é€😀")

        return EventSourceResponse(events(), retry=1500)

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        raw = b""
        async for chunk in response.aiter_bytes():
            raw += chunk
        assert response.complete  # ended with the terminal chunk
        assert raw.startswith(b"retry: 1500\n\n")
        assert raw.endswith(b"data: unicode: \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\n\n")


async def test_sync_producer_of_events() -> None:
    def events() -> Iterator[str]:
        yield from ("a", "b", "c")

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(events())

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        assert [e.data async for e in response.aiter_events()] == ["a", "b", "c"]


async def test_ping_only_when_idle() -> None:
    gate = Gate()

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(gate.events(), ping=0.5)

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        chunks = response.aiter_bytes()
        # Idle: a ping comes by itself.
        assert await asyncio.wait_for(chunks.__anext__(), TIMEOUT) == b": ping\n\n"

        # Busy: events every 25 ms for half a second, never 0.5 s of silence, no
        # pings. (A 20-fold margin: a loaded machine may stall the loop a while.)
        async def busy() -> None:
            for i in range(20):
                gate.queue.put_nowait(f"event {i}")
                await asyncio.sleep(0.025)  # the producer's pace, not a wait for a condition
            gate.queue.put_nowait(StopAsyncIteration)

        feeder = asyncio.ensure_future(busy())
        received = b""
        async for chunk in chunks:
            received += chunk
        await feeder
        assert received.count(b"data: event") == 20
        assert b": ping" not in received


@pytest.mark.parametrize("ping", [0, -1.0, math.nan])
def test_bad_ping_values_are_a_clear_error(ping: float) -> None:
    with pytest.raises(ValueError, match="ping must be > 0"):
        EventSourceResponse(iter(()), ping=ping)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="ping must be a number"):
        EventSourceResponse(iter(()), ping="15")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CR or LF"):
        EventSourceResponse(iter(()), error_event="a\nb")
    with pytest.raises(ValueError, match="retry must be >= 0"):
        EventSourceResponse(iter(()), retry=-5)
    EventSourceResponse(iter(()), ping=None)  # pings off
    EventSourceResponse(iter(()), ping=math.inf)  # never idle that long: off too


async def test_producer_error_sends_one_stream_error_event_and_ends_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> EventSourceResponse:
        async def events() -> AsyncIterator[str]:
            yield "before"
            raise RuntimeError("database password is hunter2")

        return EventSourceResponse(events())

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        events = [e async for e in response.aiter_events()]
        assert [(e.event, e.data) for e in events] == [(None, "before"), ("stream-error", "")]
        assert response.complete
    assert any(
        "hunter2" in (r.exc_text or "") for r in caplog.records if r.levelno == logging.ERROR
    )


async def test_shutdown_sends_the_last_event_and_ends_cleanly() -> None:
    gate = Gate()

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(
            gate.events(), shutdown_event="bye", shutdown_data="restarting", shutdown_retry=250
        )

    async with serve_for_test(handler, graceful_timeout=10) as client:
        async with client.stream("GET", "/") as response:
            gate.queue.put_nowait(ServerSentEvent("hi", id="1"))
            events = response.aiter_events()
            assert (await events.__anext__()).id == "1"
            closing = asyncio.ensure_future(client.server.close())
            last = await asyncio.wait_for(events.__anext__(), TIMEOUT)
            assert (last.event, last.data, last.retry) == ("bye", "restarting", 250)
            await response.read()
            assert response.complete
            await wait(gate.closed)  # the producer was closed, its finally ran
            # Ended cleanly at once: no need to wait for the 10 s grace period.
            await asyncio.wait_for(closing, TIMEOUT)


async def test_client_closing_is_noticed_even_when_the_producer_is_idle() -> None:
    """A FIN ends the stream at once, so EventSource.close() stops an idle producer."""
    gate = Gate()

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(gate.events())

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/") as response:
            gate.queue.put_nowait("hello")
            async for _ in response.aiter_events():
                break
            await response.close()
            await wait(gate.closed, 1.0)


async def test_refusing_a_stream_before_it_starts() -> None:
    async def handler(request: Request) -> Response:
        if request.last_event_id == "done":
            return Response(status=204)  # tells a browser to stop reconnecting
        raise HTTPError(401, "log in first")

    async with serve_for_test(handler) as client:
        assert (await client.get("/", headers={"Accept": "text/event-stream"})).status == 401
        assert (await client.get("/", headers={"Last-Event-ID": "done"})).status == 204


async def test_ndjson_response() -> None:
    async def handler(request: Request) -> NDJSONResponse:
        async def rows() -> AsyncIterator[object]:
            yield {"n": 1}
            yield [1, "two"]
            yield "é"

        return NDJSONResponse(rows())

    async with serve_for_test(handler) as client:
        response = await client.get("/")
        assert response.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(line) for line in response.text.splitlines()] == [
            {"n": 1},
            [1, "two"],
            "é",
        ]


@pytest.mark.parametrize(
    ("accept", "sse"),
    [
        ([], False),
        (["*/*"], False),
        (["text/event-stream"], True),
        (["TEXT/EVENT-STREAM"], True),
        (["text/event-stream;q=0"], False),
        (["text/event-stream;q=0", "*/*"], False),
        (["text/*"], True),
        (["application/x-ndjson"], False),
        (["application/x-ndjson;q=0.5, text/event-stream;q=0.9"], True),
        (["application/x-ndjson", "text/event-stream;q=0.4"], False),
        (["text/*;q=0, text/event-stream"], True),  # the most specific range decides
        (["text/event-stream;q=bogus"], False),
        (["application/json"], False),
    ],
)
def test_accept_negotiation(accept: list[str], sse: bool) -> None:
    assert wants_event_stream(accept) is sse


async def test_negotiate_stream_gives_the_same_items_both_ways() -> None:
    items = [{"id": 1}, {"id": 2, "text": "line\nbreak"}]

    async def handler(request: Request) -> Response:
        return negotiate_stream(request, iter(items), ping=None)

    async with serve_for_test(handler) as client:
        ndjson = await client.get("/")
        assert [json.loads(line) for line in ndjson.text.splitlines()] == items
        async with client.stream("GET", "/", headers={"Accept": "text/event-stream"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert [json.loads(e.data) async for e in response.aiter_events()] == items


async def test_httpx_streams_events_incrementally() -> None:
    gate = Gate()

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(gate.events())

    async with serve_for_test(handler) as client, httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{client.port}/"
        async with http.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
            lines = response.aiter_lines()
            for i in range(3):
                gate.queue.put_nowait(f"event {i}")  # released only after the last one arrived
                assert await asyncio.wait_for(lines.__anext__(), TIMEOUT) == f"data: event {i}"
                assert await asyncio.wait_for(lines.__anext__(), TIMEOUT) == ""


async def test_curl_sees_the_first_event_before_the_second_exists() -> None:
    curl = shutil.which("curl")
    assert curl, "curl is installed by .ci/run"
    gate = Gate()

    async def handler(request: Request) -> EventSourceResponse:
        return EventSourceResponse(gate.events())

    async with serve_for_test(handler) as client:
        async with processes.running(
            curl,
            "-sN",
            f"http://127.0.0.1:{client.port}/",
            stdout=asyncio.subprocess.PIPE,
            stop_signal=signal.SIGKILL,
        ) as process:
            assert process.stdout is not None
            gate.queue.put_nowait("one")
            assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT) == b"data: one\n"
            gate.queue.put_nowait("two")  # produced only now
            assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT) == b"\n"
            assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT) == b"data: two\n"
        await wait(gate.closed)
