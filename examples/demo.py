"""tinystream demo: streams that really stream.

Run it:   python -m tinystream examples.demo:app
Open http://127.0.0.1:8000/ in a few tabs: a live clock and a small chat, both over
Server-Sent Events. Then try:
  curl -N http://127.0.0.1:8000/events         the clock's event stream, as it happens
  curl -N http://127.0.0.1:8000/clock          a plain chunked stream, one line a second
  curl -N http://127.0.0.1:8000/count?n=5      a sync generator, run in a worker thread
  curl -T big.iso http://127.0.0.1:8000/upload a streamed upload, counted as it arrives
  Stop the server with Ctrl-C while a tab is open: the page's streams end cleanly with
  a "shutdown" event; start it again and the chat resumes where it was (Last-Event-ID).
  /selftest checks your browser's EventSource against this server.

Resuming after a reconnect. A browser's EventSource reconnects by itself and sends
the id of the last event it got as ``Last-Event-ID`` (``request.last_event_id``).
The chat below publishes through :class:`tinystream.broadcast.Broadcast`, whose
events carry ids, and subscribes with that header: the replay of what the page
missed comes first, then live messages, with no gap and no duplicate. Answer 204
to tell a browser to stop reconnecting for good.

Several processes: ``DEMO_BROADCAST=redis://127.0.0.1:6379/0 python -m tinystream
examples.demo:app --workers 2`` gives every worker one shared chat history, so a
page that reconnects to another worker still resumes where it was.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator

from examples.selftest import SelfTest
from tinystream import (
    EventSourceResponse,
    HTTPError,
    JSONResponse,
    Request,
    Response,
    Router,
    ServerSentEvent,
    StreamingResponse,
)
from tinystream.broadcast import Broadcast

logger = logging.getLogger("demo")

MAX_MESSAGE = 500  # characters


PAGE = """<!doctype html>
<meta charset="utf-8"><title>tinystream demo</title>
<style>body{font:16px system-ui;margin:2em;max-width:40em} #chat{height:12em;overflow:auto;
border:1px solid #ccc;padding:.5em} .note{color:#666}</style>
<h1>tinystream demo</h1>
<p>Server time: <strong id="clock">…</strong> <span class="note" id="state"></span></p>
<div id="chat"></div>
<form id="form"><input id="text" maxlength="500" placeholder="Say something" autofocus>
<button>Send</button></form>
<p class="note">Open this page in several tabs. Stop and restart the server: the page
reconnects and the chat resumes with no message lost or shown twice.
<a href="/selftest">Browser self-test</a></p>
<script>
const clock = new EventSource("/events");
clock.addEventListener("tick", e => document.getElementById("clock").textContent = e.data);
clock.addEventListener("shutdown", () => document.getElementById("state").textContent =
  "(server stopping; reconnecting…)");
clock.onopen = () => document.getElementById("state").textContent = "";
const chat = new EventSource("/chat/events");
const box = document.getElementById("chat");
chat.addEventListener("chat", e => {
  const line = document.createElement("div");
  line.textContent = "#" + e.lastEventId + " " + e.data;
  box.append(line);
  box.scrollTop = box.scrollHeight;
});
chat.addEventListener("resync", () => box.replaceChildren());
document.getElementById("form").onsubmit = async event => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (!input.value) return;
  await fetch("/chat", {method: "POST", body: input.value});
  input.value = "";
};
</script>
"""


def make_app(selftest: SelfTest | None = None, broadcast_url: str | None = None) -> Router:
    """The demo's routes, with fresh state (tests make one app per test)."""
    app = Router()
    chat = Broadcast(broadcast_url or os.environ.get("DEMO_BROADCAST", "memory://"))
    (selftest or SelfTest()).mount(app, "/selftest")

    @app.get("/")
    async def index(request: Request) -> Response:
        return Response(PAGE, media_type="text/html")

    @app.get("/events")
    async def events(request: Request) -> EventSourceResponse:
        async def ticks() -> AsyncIterator[ServerSentEvent]:
            while True:
                now = time.time()
                yield ServerSentEvent(time.strftime("%H:%M:%S"), event="tick", id=str(int(now)))
                await asyncio.sleep(1 - now % 1)  # on the second

        # On shutdown the stream ends by itself with a "shutdown" event carrying a
        # retry hint: browsers come back 2 s later, to the restarted server.
        return EventSourceResponse(ticks(), shutdown_retry=2000)

    @app.get("/chat/events")
    async def chat_events(request: Request) -> EventSourceResponse:
        # Replay after Last-Event-ID, then live; "resync" if that id is gone.
        messages = chat.subscribe("chat", last_event_id=request.last_event_id)
        return EventSourceResponse(messages, shutdown_retry=2000)

    @app.post("/chat")
    async def chat_post(request: Request) -> JSONResponse:
        text = (await request.body()).decode("utf-8", "replace").strip()
        if not text:
            raise HTTPError(400, "empty message")
        if len(text) > MAX_MESSAGE:
            raise HTTPError(413, f"messages are limited to {MAX_MESSAGE} characters")
        return JSONResponse({"id": await chat.publish("chat", text, event="chat")})

    @app.get("/clock")
    async def clock(request: Request) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            try:
                while not request.is_shutting_down():
                    yield time.strftime("%H:%M:%S\n")
                    await asyncio.sleep(1)
                yield "server is shutting down, bye\n"
            finally:
                logger.info("clock stopped")

        return StreamingResponse(lines(), media_type="text/plain")

    @app.get("/count")
    def count(request: Request) -> StreamingResponse:
        # A plain def route and a sync generator: both run in worker threads.
        try:
            n = int(request.query_params.get("n", "10"))
        except ValueError:
            raise HTTPError(400, "n must be an integer") from None
        if not 0 <= n <= 1_000_000:
            raise HTTPError(400, "n must be from 0 to 1000000")

        def numbers() -> Iterator[str]:
            for i in range(n):
                yield f"{i}\n"

        return StreamingResponse(numbers(), media_type="text/plain")

    @app.route("/upload", methods=("POST", "PUT"))
    async def upload(request: Request) -> JSONResponse:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse({"received": size})

    return app


app = make_app()
