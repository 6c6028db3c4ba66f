"""The demo's SSE self-test page in headless Chromium (Debian's chromium, installed by .ci/run)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from examples.demo import make_app
from examples.selftest import BIG, RETRY_MS, SelfTest
from tinystream import Request, start_server
from tinystream.testing import ClientConnection, serve_for_test

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # This machine has no network: background fetches would only fail noisily.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Chromium keeps a page's EventSource open in its back/forward cache after
    # navigating away, holding one of the six connections per host.
    "--disable-back-forward-cache",
]


async def open_in_chromium(url: str, profile: Path) -> asyncio.subprocess.Process:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is installed by .ci/run"
    return await asyncio.create_subprocess_exec(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@pytest.mark.parametrize("gzip", ["0", "1"])
async def test_eventsource_self_test_in_chromium(tmp_path: Path, gzip: str) -> None:
    """The same checks with the stream plain and gzip-compressed (each event flushed)."""
    selftest = SelfTest()
    async with serve_for_test(make_app(selftest)) as client:
        url = f"http://127.0.0.1:{client.port}/selftest?gzip={gzip}"
        browser = await open_in_chromium(url, tmp_path)
        try:
            report = await asyncio.wait_for(selftest.wait_report(), 60)
            # The producer's finally ran within a second of EventSource.close(),
            # which the page did just before sending its report.
            await asyncio.wait_for(selftest.producer_closed.wait(), 5)
            assert selftest.closed_at - selftest.reported_at < 1.0
        finally:
            browser.kill()
            await browser.wait()

    log = report["log"]
    assert [(e["type"], e["data"], e["id"]) for e in log] == [
        ("greeting", "hello", ""),
        ("message", "line one\nline two\nline three", ""),
        ("message", "unicode: é € 😀 — ✓", ""),
        ("big", f"len:{BIG}", ""),
        *[("message", f"n{i}", str(i)) for i in range(1, 11)],  # none lost, none twice
        ("done", "finished", "10"),
    ]
    assert all(e["exact"] for e in log)  # the 1 MB event arrived intact
    # The server ended the first stream; the browser came back by itself with
    # Last-Event-ID, after the retry the server asked for (the default is 3 s).
    assert report["opens"] == 2
    assert selftest.last_event_ids == [None, "5"]
    assert selftest.compressed == [gzip == "1"] * 2  # Chromium accepts gzip: it was used
    # Under the 3 s Chromium uses by default: the server's retry was honoured.
    assert RETRY_MS * 0.8 <= report["reconnectDelay"] < 2900


async def test_demo_page_resumes_the_chat_after_a_server_restart(tmp_path: Path) -> None:
    """Stop the server under an open page: its streams end cleanly, the browser
    reconnects to the restarted server and resumes with the last id it saw."""
    app = make_app()
    resumed: asyncio.Queue[str | None] = asyncio.Queue()

    async def handler(request: Request) -> object:
        if request.path == "/events":
            resumed.put_nowait(request.last_event_id)
        return await app(request)

    first = await start_server(handler, port=0, graceful_timeout=5)
    port = first.port
    assert port is not None
    browser = await open_in_chromium(f"http://127.0.0.1:{port}/", tmp_path)
    try:
        assert await asyncio.wait_for(resumed.get(), 60) is None  # a fresh page
        await first.wait_stats(lambda s: s.streams == 1, 30)  # one stream: clock and chat
        conn = await ClientConnection.open("127.0.0.1", port)
        for text in ("one", "two", "three"):
            assert (await conn.request("POST", "/chat", body=text.encode())).status == 200
        await conn.close()
        await first.close()  # the stream ends with a "shutdown" event, retry 2 s
        second = await start_server(handler, port=port)
        try:
            # The page saw all three messages: it resumes after the third.
            assert await asyncio.wait_for(resumed.get(), 30) == "3"
            await second.wait_stats(lambda s: s.streams == 1, 30)
        finally:
            await second.close()
    finally:
        browser.kill()
        await browser.wait()


async def test_four_pages_of_the_demo_each_get_their_stream(tmp_path: Path) -> None:
    """Two EventSources per page used eight of a host's six HTTP/1.1 connections
    at four tabs: the fourth page got nothing. One per page leaves room."""
    app = make_app()
    opened: asyncio.Queue[None] = asyncio.Queue()

    async def handler(request: Request) -> object:
        if request.path == "/events":
            opened.put_nowait(None)
        return await app(request)

    async with serve_for_test(handler) as client:
        browser = await open_in_chromium(f"http://127.0.0.1:{client.port}/tabs", tmp_path)
        try:
            for _ in range(4):
                await asyncio.wait_for(opened.get(), 60)
            await client.server.wait_stats(lambda s: s.streams == 4, 30)
            # The server answers other requests meanwhile.
            assert (await client.get("/")).status == 200
        finally:
            browser.kill()
            await browser.wait()
