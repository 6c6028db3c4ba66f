"""A browser self-test of Server-Sent Events, served by the demo at /selftest.

The page opens an EventSource and checks, in the browser's own EventSource:
named events, multi-line data, unicode, a 1 MB event, comments and pings being
ignored, the server ending the stream -> an automatic reconnect after the
``retry`` the server asked for, carrying ``Last-Event-ID``, with no event lost or
repeated; then it closes the EventSource and reports what it saw to
``/selftest/report``. The server side records when the second stream's producer
was closed, so a test can check that it happened within a second of the close.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from tinystream import EventSourceResponse, JSONResponse, Request, Response, Router, ServerSentEvent
from tinystream._compress import accepts_gzip

RETRY_MS = 500  # the reconnection delay the server asks for (the browser default is 3 s)
BIG = 1_000_000  # characters in the large event

PAGE = """<!doctype html>
<meta charset="utf-8"><title>tinystream SSE self-test</title>
<h1>EventSource self-test</h1><pre id="out">running…</pre>
<script>
const log = [];
let opens = 0, errorAt = null, reopenedAt = null;
const es = new EventSource("PREFIX/events" + location.search);  // ?gzip=1: compressed
es.onopen = () => { opens += 1; if (opens === 2) reopenedAt = performance.now(); };
es.onerror = () => { if (errorAt === null) errorAt = performance.now(); };
const record = type => e => log.push({type, id: e.lastEventId,
  data: e.data.length > 1000 ? "len:" + e.data.length : e.data,
  exact: type !== "big" || e.data === "x".repeat(BIG)});
es.onmessage = record("message");
es.addEventListener("greeting", record("greeting"));
es.addEventListener("big", record("big"));
es.addEventListener("done", async e => {
  record("done")(e);
  es.close();
  const report = {log, opens, reconnectDelay: reopenedAt - errorAt};
  document.getElementById("out").textContent = JSON.stringify(report, null, 1);
  await fetch("PREFIX/report", {method: "POST", body: JSON.stringify(report)});
  document.title = "reported";
});
</script>
"""


class SelfTest:
    """State of the self-test; one per app, so every test run starts fresh."""

    def __init__(self) -> None:
        self.report: asyncio.Future[dict[str, Any]] | None = None
        self.reported_at = 0.0  # time.monotonic() when the report arrived
        self.closed_at = 0.0  # time.monotonic() when the second producer was closed
        self.producer_closed = asyncio.Event()
        self.last_event_ids: list[str | None] = []
        self.compressed: list[bool] = []  # per events request: was it gzip-encoded?

    def wait_report(self) -> asyncio.Future[dict[str, Any]]:
        if self.report is None:
            self.report = asyncio.get_running_loop().create_future()
        return self.report

    def mount(self, router: Router, prefix: str) -> None:
        page = PAGE.replace("PREFIX", prefix).replace("BIG", str(BIG))

        async def index(request: Request) -> Response:
            return Response(page, media_type="text/html")

        async def events(request: Request) -> EventSourceResponse:
            self.last_event_ids.append(request.last_event_id)
            gzip = request.query_params.get("gzip") == "1"
            self.compressed.append(
                gzip and accepts_gzip(request.headers.get_all("accept-encoding"))
            )
            if request.last_event_id is None:
                return EventSourceResponse(self._first(), retry=RETRY_MS, ping=None, compress=gzip)
            resumed = self._resumed(int(request.last_event_id))
            return EventSourceResponse(resumed, ping=0.1, compress=gzip)

        async def report(request: Request) -> JSONResponse:
            self.reported_at = time.monotonic()
            future = self.wait_report()
            if not future.done():
                future.set_result(json.loads(await request.body()))
            return JSONResponse({"ok": True})

        router.add(prefix, index)
        router.add(prefix + "/events", events)
        router.add(prefix + "/report", report, methods=("POST",))

    async def _first(self) -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="a comment: browsers ignore it")
        yield ServerSentEvent("hello", event="greeting")
        yield ServerSentEvent("line one\nline two\r\nline three")
        yield ServerSentEvent("unicode: é € 😀 — ✓")
        yield ServerSentEvent("x" * BIG, event="big")
        for number in range(1, 6):
            yield ServerSentEvent(f"n{number}", id=str(number))
        # Returning ends the response cleanly: the browser reconnects after RETRY_MS.

    async def _resumed(self, after: int) -> AsyncIterator[ServerSentEvent]:
        try:
            for number in range(after + 1, 11):
                yield ServerSentEvent(f"n{number}", id=str(number))
            await asyncio.sleep(0.3)  # idle for a while: pings (every 0.1 s) flow meanwhile
            yield ServerSentEvent("finished", event="done")
            await asyncio.Event().wait()  # until the browser closes the EventSource
        finally:
            self.closed_at = time.monotonic()
            self.producer_closed.set()
