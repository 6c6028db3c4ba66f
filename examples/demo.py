"""tinystream demo: streams that really stream.

Run it:   python -m tinystream examples.demo:app
Open http://127.0.0.1:8000/ in a few tabs: a live clock and a small chat, both over
one Server-Sent Events stream per tab. Then try:
  curl -N http://127.0.0.1:8000/events         the page's event stream, as it happens
  curl -N http://127.0.0.1:8000/chat/events    the chat alone
  curl -N http://127.0.0.1:8000/clock          a plain chunked stream, one line a second
  curl -N http://127.0.0.1:8000/count?n=5      a sync generator, run in a worker thread
  curl -T big.iso http://127.0.0.1:8000/upload a streamed upload, counted as it arrives
  Stop the server with Ctrl-C while a tab is open: the page's stream ends cleanly with
  a "shutdown" event; start it again and the chat resumes where it was (Last-Event-ID).
  /selftest checks your browser's EventSource against this server; /tabs shows four
  pages at once.

One stream per tab. Browsers allow six HTTP/1.1 connections per host, and an open
EventSource holds one for as long as the page is open: with two per page, the
fourth tab got nothing. So the clock's ticks and the chat's messages share one
stream. (HTTP/2 lifts the limit: its streams share one connection. So does one
stream shared by all tabs, through a SharedWorker or BroadcastChannel.)

Resuming after a reconnect. A browser's EventSource reconnects by itself and sends
the id of the last event it got as ``Last-Event-ID`` (``request.last_event_id``).
Only chat messages carry ids (an event without one leaves the browser's last id
alone), published through :class:`tinystream.broadcast.Broadcast`: the replay of
what the page missed comes first, then live messages, with no gap and no
duplicate. A new page gets the last :data:`CHAT_HISTORY` messages first.

Several processes: ``DEMO_BROADCAST=redis://127.0.0.1:6379/0 python -m tinystream
examples.demo:app --workers 2`` gives every worker one shared chat history. With the
default ``memory://`` each worker would have its own chat: the demo warns at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator

from examples.selftest import STYLE, SelfTest
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
from tinystream.broadcast import Broadcast, BroadcastUnavailable
from tinystream.cli import WORKERS_ENV

logger = logging.getLogger("demo")

MAX_MESSAGE = 500  # characters
#: Chat messages a new page shows.
CHAT_HISTORY = 20  # messages
#: The reconnection delay a page is told to use after the server stops.
SHUTDOWN_RETRY = 2000  # milliseconds


PAGE = (
    """<!doctype html>
<meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>tinystream demo</title>
<style>"""
    + STYLE
    + """
#chat{height:12em;overflow:auto;border:1px solid #ccd;border-radius:6px;padding:.5em;
  background:#fff}
#chat .id{color:#889;font-size:.8em;margin-right:.5em}
#clock{font-variant-numeric:tabular-nums}
</style>
<h1>tinystream demo</h1>
<p>Server time: <strong id="clock">…</strong> <span class="note" id="state"></span></p>
<div id="chat"></div>
<form id="form"><input id="text" maxlength="500" placeholder="Say something" autofocus>
<button>Send</button> <span class="note" id="error"></span></form>
<p class="note">Open this page in several tabs. Stop and restart the server: the page
reconnects and the chat resumes with no message lost or shown twice.</p>
<p class="note">One event stream per tab carries both the clock and the chat: browsers
allow only six HTTP/1.1 connections per host, and each open EventSource keeps one, so
two streams per page left the fourth tab with nothing. HTTP/2 (one connection, many
streams) or one stream shared by all tabs (a SharedWorker) lifts the limit.
<a href="/tabs">Four pages at once</a> · <a href="/selftest">Browser self-test</a></p>
<script>
const box = document.getElementById("chat"), state = document.getElementById("state");
const stream = new EventSource("/events");
stream.addEventListener("tick", e => document.getElementById("clock").textContent = e.data);
stream.addEventListener("chat", e => {
  const line = document.createElement("div"), id = document.createElement("span");
  id.className = "id";
  id.textContent = "#" + e.lastEventId;
  line.append(id, e.data);
  box.append(line);
  while (box.childElementCount > 200) box.firstElementChild.remove();
  box.scrollTop = box.scrollHeight;
});
stream.addEventListener("resync", () => box.replaceChildren());
stream.addEventListener("shutdown", () => state.textContent = "(server stopping; reconnecting…)");
stream.onerror = () => { if (!state.textContent) state.textContent = "(reconnecting…)"; };
stream.onopen = () => state.textContent = "";
document.getElementById("form").onsubmit = async event => {
  event.preventDefault();
  const input = document.getElementById("text"), error = document.getElementById("error");
  if (!input.value) return;
  const response = await fetch("/chat", {method: "POST", body: input.value});
  error.textContent = response.ok ? "" : await response.text();
  if (response.ok) input.value = "";
};
</script>
"""
)

TABS = (
    """<!doctype html>
<meta charset="utf-8"><title>tinystream demo: four pages</title>
<style>"""
    + STYLE
    + """
body{max-width:none} .grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
iframe{width:100%;height:32em;border:1px solid #ccd;border-radius:6px;background:#fff}
</style>
<h1>Four pages, four event streams</h1>
<p class="note">Each frame is the demo page with its one EventSource: four of the six
connections a browser allows per host over HTTP/1.1.</p>
<div class="grid"><iframe src="/"></iframe><iframe src="/"></iframe>
<iframe src="/"></iframe><iframe src="/"></iframe></div>
"""
)


def _second(second: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(second))


async def page_events(
    messages: AsyncIterator[ServerSentEvent], clock: Callable[[], float] = time.time
) -> AsyncIterator[ServerSentEvent]:
    """The clock's ticks (no id: they must not move the page's Last-Event-ID)
    merged with the chat's messages; ends when the chat subscription ends."""
    next_message: asyncio.Future[ServerSentEvent] = asyncio.ensure_future(anext(messages))
    shown = int(clock())  # the second we are in
    try:
        yield ServerSentEvent(_second(shown), event="tick")  # at once, not in up to 1 s
        while True:
            until_next_second = 1 - clock() % 1
            done, _ = await asyncio.wait({next_message}, timeout=until_next_second)
            if not done:
                # The second just reached: a timer may fire a hair before the
                # boundary (round, not int), and a second is never shown twice.
                second = round(clock())
                if second != shown:
                    shown = second
                    yield ServerSentEvent(_second(second), event="tick")
                continue
            try:
                yield next_message.result()
            except StopAsyncIteration:
                return  # the broadcast ended it: the browser reconnects and resumes
            next_message = asyncio.ensure_future(anext(messages))
    finally:
        # Stop the pending pull before closing: an async generator cannot be
        # closed while it runs.
        next_message.cancel()
        await asyncio.wait({next_message})
        closing = getattr(messages, "aclose", None)
        if closing is not None:
            await closing()


def make_app(selftest: SelfTest | None = None, broadcast_url: str | None = None) -> Router:
    """The demo's routes, with fresh state (tests make one app per test)."""
    app = Router()
    url = broadcast_url or os.environ.get("DEMO_BROADCAST", "memory://")
    workers = int(os.environ.get(WORKERS_ENV, "1") or 1)
    if url.startswith("memory:") and workers > 1:
        # The app is made once, at import, before --workers forks: one warning.
        logger.warning(
            "the chat uses memory:// with %d worker processes: each worker has its own chat, "
            "so pages on different workers do not see each other's messages; start with "
            "DEMO_BROADCAST=redis://127.0.0.1:6379/0 to share one",
            workers,
        )
    chat = Broadcast(url)
    (selftest or SelfTest()).mount(app, "/selftest")

    @app.get("/")
    async def index(request: Request) -> Response:
        return Response(PAGE, media_type="text/html")

    @app.get("/tabs")
    async def tabs(request: Request) -> Response:
        return Response(TABS, media_type="text/html")

    @app.get("/events")
    async def events(request: Request) -> EventSourceResponse:
        # Replay after Last-Event-ID (a reconnect), or the last messages (a new
        # page), then live; "resync" if that id is gone.
        messages = chat.subscribe("chat", last_event_id=request.last_event_id, history=CHAT_HISTORY)
        # On shutdown the stream ends by itself with a "shutdown" event carrying a
        # retry hint: browsers come back 2 s later, to the restarted server.
        return EventSourceResponse(page_events(messages), shutdown_retry=SHUTDOWN_RETRY)

    @app.get("/chat/events")
    async def chat_events(request: Request) -> EventSourceResponse:
        # The chat alone (for curl and scripts; the page uses /events): replay after
        # Last-Event-ID, then live; "resync" if that id is gone.
        messages = chat.subscribe("chat", last_event_id=request.last_event_id)
        return EventSourceResponse(messages, shutdown_retry=SHUTDOWN_RETRY)

    @app.post("/chat")
    async def chat_post(request: Request) -> JSONResponse:
        try:
            text = (await request.body()).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise HTTPError(400, "messages must be UTF-8 text") from None
        if not text:
            raise HTTPError(400, "empty message")
        if len(text) > MAX_MESSAGE:
            raise HTTPError(413, f"messages are limited to {MAX_MESSAGE} characters")
        try:
            event_id = await chat.publish("chat", text, event="chat")
        except BroadcastUnavailable as exc:
            # Not our bug and not the client's: a short answer, one line in the log.
            logger.warning("chat message not sent: %s", exc)
            raise HTTPError(
                503,
                "the chat is unavailable: its message store cannot be reached",
                {"Retry-After": "5"},
            ) from None
        return JSONResponse({"id": event_id})

    @app.get("/clock")
    async def clock(request: Request) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            try:
                while not request.is_shutting_down():
                    yield _second(time.time()) + "\n"
                    await asyncio.sleep(1 - time.time() % 1)  # on the second
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
