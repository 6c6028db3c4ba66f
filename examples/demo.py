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
Give every event an id you can resume from, then on each request replay what came
after it before going live - :class:`ChatRoom` below does exactly that. Answer 204
to tell a browser to stop reconnecting for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
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

logger = logging.getLogger("demo")

MAX_MESSAGE = 500  # characters


class ChatRoom:
    """Chat history with subscriptions that resume after a reconnect, gap-free.

    Every message gets the next integer id. A subscriber passes the id of the last
    message it saw and first gets every kept message after it, then live ones:
    taking "all ids greater than mine" under one lock leaves no gap and no
    duplicate at the seam between replay and live delivery.
    """

    def __init__(self, keep: int = 1000) -> None:
        self._messages: deque[tuple[int, str]] = deque(maxlen=keep)
        self._next_id = 1
        self._changed = asyncio.Condition()

    async def post(self, text: str) -> int:
        async with self._changed:
            message_id = self._next_id
            self._next_id += 1
            self._messages.append((message_id, text))
            self._changed.notify_all()
        return message_id

    async def follow(self, last_event_id: str | None) -> AsyncIterator[ServerSentEvent]:
        after = self._parse(last_event_id)
        newest = self._next_id - 1
        oldest = self._messages[0][0] if self._messages else self._next_id
        if after > newest or after < oldest - 1:
            # An id from before a restart, or older than what we keep: say so, so
            # the page can reload its history, then send everything we have.
            yield ServerSentEvent("history lost", event="resync")
            after = min(after, oldest - 1)
        while True:
            async with self._changed:
                while self._next_id - 1 <= after:
                    await self._changed.wait()
                pending = [m for m in self._messages if m[0] > after]
            for message_id, text in pending:
                yield ServerSentEvent(text, event="chat", id=str(message_id))
                after = message_id

    def _parse(self, last_event_id: str | None) -> int:
        if last_event_id is None:
            # A new page: the last 20 messages, then live ones.
            return max(self._next_id - 1 - 20, 0)
        try:
            return int(last_event_id)
        except ValueError:
            return 0  # not one of our ids: replay everything we have


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


def make_app(selftest: SelfTest | None = None) -> Router:
    """The demo's routes, with fresh state (tests make one app per test)."""
    app = Router()
    room = ChatRoom()
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
        return EventSourceResponse(room.follow(request.last_event_id), shutdown_retry=2000)

    @app.post("/chat")
    async def chat_post(request: Request) -> JSONResponse:
        text = (await request.body()).decode("utf-8", "replace").strip()
        if not text:
            raise HTTPError(400, "empty message")
        if len(text) > MAX_MESSAGE:
            raise HTTPError(413, f"messages are limited to {MAX_MESSAGE} characters")
        return JSONResponse({"id": await room.post(text)})

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
