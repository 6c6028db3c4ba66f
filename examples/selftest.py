"""A browser self-test of Server-Sent Events, served by the demo at /selftest.

The page opens an EventSource and checks, in the browser's own EventSource:
named events, multi-line data, unicode, a 1 MB event, comments and pings being
ignored, the server ending the stream -> an automatic reconnect after the
``retry`` the server asked for, carrying ``Last-Event-ID``, with no event lost or
repeated; then it closes the EventSource and reports what it saw to
``/selftest/report``, which answers with the server's side (the producer was
closed), and the page shows a pass/fail verdict per check. The raw report (JSON)
is what the automated browser test (tests/test_browser.py) checks. The server
side records when the second stream's producer was closed, so a test can check
that it happened within a second of the close.
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
#: How long the report waits for the server to close the stream's producer.
PRODUCER_CLOSE_WAIT = 2.0  # seconds

#: The look shared by the demo's pages.
STYLE = """
body{font:16px/1.45 system-ui,sans-serif;margin:2em auto;max-width:44em;padding:0 1em;
  color:#1d2330;background:#f6f7fb}
h1{font-size:1.5em;margin:.2em 0 .6em} .note{color:#667}
input{font:inherit;padding:.3em .5em;width:22em;max-width:70%} button{font:inherit}
a{color:#2a5bd7}
"""

PAGE = (
    """<!doctype html>
<meta charset="utf-8"><title>tinystream SSE self-test</title>
<style>"""
    + STYLE
    + r"""
ul{list-style:none;padding:0}
li{padding:.35em .6em;margin:.25em 0;border-radius:6px;background:#fff}
li.pass::before{content:"✓ ";color:#1a7f37;font-weight:bold}
li.fail::before{content:"✗ ";color:#c62828;font-weight:bold} li.fail{background:#fdecea}
#verdict{font-size:1.2em;font-weight:bold}
#verdict.pass{color:#1a7f37} #verdict.fail{color:#c62828}
pre{font-size:.8em;overflow:auto;background:#fff;padding:.5em}
</style>
<h1>EventSource self-test</h1>
<p id="verdict">Running… (about two seconds)</p>
<ul id="checks"></ul>
<details><summary class="note">Raw report</summary><pre id="out"></pre></details>
<p class="note"><a href="/">Back to the demo</a></p>
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

// What the browser should have seen, check by check.
function verdicts(report, server) {
  const seen = report.log, numbered = seen.filter(e => /^n\d+$/.test(e.data));
  const expected = Array.from({length: 10}, (_, i) => "n" + (i + 1));
  return [
    ["A named event is dispatched to its listener",
     seen.some(e => e.type === "greeting" && e.data === "hello")],
    ["Multi-line data arrives joined by newlines (CRLF too)",
     seen.some(e => e.data === "line one\nline two\nline three")],
    ["Unicode arrives intact", seen.some(e => e.data === "unicode: é € 😀 — ✓")],
    ["A 1 MB event arrives whole", seen.some(e => e.type === "big" && e.exact)],
    ["Comments and pings are not dispatched", seen.length === 15],
    ["Reconnects by itself after the stream ends", report.opens === 2],
    ["Waits the retry the server asked for (RETRY ms), not the default 3 s",
     report.reconnectDelay >= RETRY * 0.8 && report.reconnectDelay < 2900],
    ["Resumes with Last-Event-ID: none lost, none twice",
     JSON.stringify(numbered.map(e => e.data)) === JSON.stringify(expected)],
    ["The server closed the stream's producer within a second of close()",
     server.producerClosedWithin !== null && server.producerClosedWithin < 1],
  ];
}

es.addEventListener("done", async e => {
  record("done")(e);
  es.close();
  const report = {log, opens, reconnectDelay: reopenedAt - errorAt};
  document.getElementById("out").textContent = JSON.stringify(report, null, 1);
  const answer = await fetch("PREFIX/report", {method: "POST", body: JSON.stringify(report)});
  const server = await answer.json();
  const list = document.getElementById("checks"), results = verdicts(report, server);
  for (const [text, ok] of results) {
    const item = document.createElement("li");
    item.className = ok ? "pass" : "fail";
    item.textContent = text;
    list.append(item);
  }
  const failed = results.filter(([, ok]) => !ok).length;
  const verdict = document.getElementById("verdict");
  verdict.className = failed ? "fail" : "pass";
  verdict.textContent = failed ? `${failed} of ${results.length} checks failed`
                               : `All ${results.length} checks passed`;
  document.title = "reported";
});
</script>
"""
)


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
        page = (
            PAGE.replace("PREFIX", prefix).replace("BIG", str(BIG)).replace("RETRY", str(RETRY_MS))
        )

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
            # The page closed its EventSource just before reporting: give the
            # server's side of that check (the producer's finally ran) to the page.
            try:
                await asyncio.wait_for(self.producer_closed.wait(), PRODUCER_CLOSE_WAIT)
            except asyncio.TimeoutError:
                return JSONResponse({"producerClosedWithin": None})
            return JSONResponse({"producerClosedWithin": self.closed_at - self.reported_at})

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
