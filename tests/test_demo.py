"""examples/demo.py: one event stream per page, chat history, the clock, and errors a user can read."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from examples import demo
from examples.demo import CHAT_HISTORY, make_app
from tinystream.sse import ServerSentEvent
from tinystream.testing import serve_for_test

TIMEOUT = 10.0
CLOCK = re.compile(r"\d\d:\d\d:\d\d")


def test_the_clock_shows_each_second_once_and_the_first_at_once() -> None:
    """The first tick names the second we are in; a timer firing a hair before a
    boundary names the second just reached. (It once showed 100.6 as 101, then 101
    again at the boundary: a repeated first value.)"""
    times = iter([100.6, 100.999, 100.9995, 101.99, 101.998])

    async def silence() -> AsyncIterator[ServerSentEvent]:
        await asyncio.Event().wait()
        yield ServerSentEvent("never")

    async def ticks() -> list[str | None]:
        events = demo.page_events(silence(), clock=lambda: next(times))
        try:
            return [(await anext(events)).data for _ in range(3)]
        finally:
            await events.aclose()

    assert asyncio.run(ticks()) == [demo._second(100), demo._second(101), demo._second(102)]


async def test_one_stream_carries_history_chat_and_ticks() -> None:
    async with serve_for_test(make_app(broadcast_url="memory://")) as client:
        for i in range(CHAT_HISTORY + 3):
            assert (await client.post("/chat", body=f"m{i}".encode())).status == 200
        async with client.stream("GET", "/events") as response:
            events = response.aiter_events()
            first = await asyncio.wait_for(anext(events), TIMEOUT)
            assert first.event == "tick" and CLOCK.fullmatch(first.data or "")  # at once
            assert first.id is None  # ticks never move the page's Last-Event-ID
            history = [await asyncio.wait_for(anext(events), TIMEOUT) for _ in range(CHAT_HISTORY)]
            # A new page shows the latest messages, oldest first, each with its id.
            assert [e.data for e in history] == [f"m{i}" for i in range(3, CHAT_HISTORY + 3)]
            assert {e.event for e in history} == {"chat"} and history[-1].id == str(
                CHAT_HISTORY + 3
            )
            assert (await client.post("/chat", body=b"live")).status == 200
            live = await asyncio.wait_for(anext(events), TIMEOUT)
            assert (live.event, live.data) == ("chat", "live")
            ticks = []
            while len(ticks) < 2:
                event = await asyncio.wait_for(anext(events), TIMEOUT)
                if event.event == "tick":
                    ticks.append(event.data)
            assert ticks[0] != ticks[1]  # a new second each time, never the same one twice
            response.abort()
        await client.server.wait_stats(lambda s: s.streams == 0, TIMEOUT)


async def test_a_reconnecting_page_resumes_after_its_last_id() -> None:
    async with serve_for_test(make_app(broadcast_url="memory://")) as client:
        for text in ("one", "two", "three"):
            await client.post("/chat", body=text.encode())
        async with client.stream("GET", "/events", headers={"Last-Event-ID": "2"}) as response:
            chat = [e async for e in _chat_events(response.aiter_events(), 1)]
            assert [(e.id, e.data) for e in chat] == [("3", "three")]
            response.abort()


async def _chat_events(events, count):  # type: ignore[no-untyped-def]
    taken = 0
    async for event in events:
        if event.event == "chat":
            yield event
            taken += 1
            if taken == count:
                return


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"\xff\xfe not utf-8", 400, b"messages must be UTF-8 text"),
        (b"   ", 400, b"empty message"),
        (b"x" * 501, 413, b"messages are limited to 500 characters"),
    ],
)
async def test_chat_refuses_client_mistakes_with_4xx(body: bytes, status: int, text: bytes) -> None:
    async with serve_for_test(make_app(broadcast_url="memory://")) as client:
        response = await client.post("/chat", body=body)
        assert response.status == status and response.body == text + b"\n"


async def test_chat_with_redis_down_answers_503_with_a_short_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("redis")
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    async with serve_for_test(make_app(broadcast_url="redis://127.0.0.1:1/0")) as client:
        response = await client.post("/chat", body=b"hello")
    assert response.status == 503
    assert response.body == b"the chat is unavailable: its message store cannot be reached\n"
    assert response.headers["retry-after"] == "5"
    assert not [r for r in caplog.records if r.exc_info]  # no traceback in the log either
    assert next(r.getMessage() for r in caplog.records if r.name == "demo").startswith(
        "chat message not sent:"
    )
