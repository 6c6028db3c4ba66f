"""The demo's SSE self-test page in headless Chromium (Debian's chromium, installed by .ci/run)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from examples.demo import make_app
from examples.selftest import BIG, RETRY_MS, SelfTest
from tinystream import Request, start_server
from tinystream.testing import ClientConnection, serve_for_test

from . import processes

#: Bound on each wait for the browser: Chromium's start takes seconds on a loaded machine.
BROWSER_TIMEOUT = 60.0  # seconds
#: pytest-timeout for a browser test: several such waits, and a margin.
BROWSER_TEST_TIMEOUT = 300  # seconds

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


def open_in_chromium(url: str, profile: Path) -> AbstractAsyncContextManager[object]:
    """Chromium showing ``url`` for the ``async with`` block; then it and all its
    helper processes (zygote, renderers, GPU and network services) are killed."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is installed by .ci/run"
    return processes.running(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        url,
        stop_signal=signal.SIGKILL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
@pytest.mark.parametrize("gzip", ["0", "1"])
async def test_eventsource_self_test_in_chromium(tmp_path: Path, gzip: str) -> None:
    """The same checks with the stream plain and gzip-compressed (each event flushed)."""
    selftest = SelfTest()
    async with serve_for_test(make_app(selftest)) as client:
        url = f"http://127.0.0.1:{client.port}/selftest?gzip={gzip}"
        async with open_in_chromium(url, tmp_path):
            report = await asyncio.wait_for(selftest.wait_report(), BROWSER_TIMEOUT)
            # The producer's finally ran within a second of EventSource.close(),
            # which the page did just before sending its report.
            await asyncio.wait_for(selftest.producer_closed.wait(), 5)
            assert selftest.closed_at - selftest.reported_at < 1.0

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


@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
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
    try:
        async with open_in_chromium(f"http://127.0.0.1:{port}/", tmp_path):
            # a fresh page
            assert await asyncio.wait_for(resumed.get(), BROWSER_TIMEOUT) is None
            await first.wait_stats(lambda s: s.streams == 1, BROWSER_TIMEOUT)  # clock and chat
            conn = await ClientConnection.open("127.0.0.1", port)
            for text in ("one", "two", "three"):
                assert (await conn.request("POST", "/chat", body=text.encode())).status == 200
            await conn.close()
            await first.close()  # the stream ends with a "shutdown" event, retry 2 s
            second = await start_server(handler, port=port)
            try:
                # The page saw all three messages: it resumes after the third.
                assert await asyncio.wait_for(resumed.get(), BROWSER_TIMEOUT) == "3"
                await second.wait_stats(lambda s: s.streams == 1, BROWSER_TIMEOUT)
            finally:
                await second.close()
    finally:
        await first.close()  # safe to call again


async def test_four_pages_of_the_demo_each_get_their_stream(tmp_path: Path) -> None:
    """Two EventSources per page used eight of a host's six HTTP/1.1 connections
    at four tabs: the fourth page got nothing. One per page leaves room."""
    app = make_app()
    opened: asyncio.Queue[None] = asyncio.Queue()

    async def handler(request: Request) -> object:
        if request.path == "/events":
            opened.put_nowait(None)
        return await app(request)

    async with (
        serve_for_test(handler) as client,
        open_in_chromium(f"http://127.0.0.1:{client.port}/tabs", tmp_path),
    ):
        for _ in range(4):
            await asyncio.wait_for(opened.get(), BROWSER_TIMEOUT)
        await client.server.wait_stats(lambda s: s.streams == 4, BROWSER_TIMEOUT)
        # The server answers other requests meanwhile.
        assert (await client.get("/")).status == 200
