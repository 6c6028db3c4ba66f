"""A chat and a price ticker with Broadcast: fan-out, replay, and resuming after a reconnect.

What it teaches: :class:`~tinystream.broadcast.Broadcast` publishes an event once
and delivers it to every subscriber; each event gets an id that grows in publish
order. A browser's EventSource remembers the last id it saw and, when its
connection breaks, reconnects by itself with ``Last-Event-ID`` (WHATWG HTML
§9.2.4); ``subscribe(channel, last_event_id=request.last_event_id)`` replays
what it missed from the retained history, then goes on live - no gap, no
duplicate. An id older than the history yields one ``resync`` event: the page
clears itself and starts over instead of silently missing messages.

The ticker shows a publisher that runs only while someone listens: the first
subscriber starts it, the last one to leave stops it.

Run it:   python -m tinystream examples.chat:app
Then try:
  open http://127.0.0.1:8000/ in two tabs, chat; stop the server (Ctrl-C) and start it
      again: the pages reconnect (a ``retry`` of 1 s) and the chat continues (the ids
      restart with a new process: memory:// keeps history per process; see below)
  curl -N http://127.0.0.1:8000/chat/events                  live chat events
  curl -d 'hello from curl' http://127.0.0.1:8000/chat       publish: {"id": "1"}
  curl -N -H 'Last-Event-ID: 0' http://127.0.0.1:8000/chat/events    replay from the start
  curl -N http://127.0.0.1:8000/ticker                       a price a second, while anyone listens
  CHAT_BROADCAST=redis://127.0.0.1:6379/0 python -m tinystream examples.chat:app --workers 2
      several processes, one shared history (pip install 'tinystream[redis]')
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator

from tinystream import (
    EventSourceResponse,
    HTTPError,
    JSONResponse,
    Request,
    Response,
    Router,
    ServerSentEvent,
)
from tinystream.broadcast import Broadcast, BroadcastUnavailable

MAX_MESSAGE = 500  # characters

PAGE = """<!doctype html>
<meta charset="utf-8"><title>chat and ticker</title>
<p>Price: <strong id="price">…</strong></p>
<div id="log" style="height:12em;overflow:auto;border:1px solid #ccc"></div>
<form id="form"><input id="text" maxlength="500" autofocus><button>Send</button></form>
<script>
const log = document.getElementById("log");
const chat = new EventSource("/chat/events");
chat.addEventListener("message", e => {
  const line = document.createElement("div");
  line.textContent = "#" + e.lastEventId + " " + e.data;
  log.append(line);
});
chat.addEventListener("resync", () => log.replaceChildren());  // history lost: start over
const ticker = new EventSource("/ticker");
ticker.addEventListener("price", e => document.getElementById("price").textContent = e.data);
document.getElementById("form").onsubmit = async event => {
  event.preventDefault();
  const text = document.getElementById("text");
  if (text.value) await fetch("/chat", {method: "POST", body: text.value});
  text.value = "";
};
</script>
"""


class Ticker:
    """Publishes a price on ``channel`` each ``interval`` seconds while anyone listens."""

    def __init__(self, broadcast: Broadcast, channel: str = "ticker", interval: float = 1.0):
        self.broadcast = broadcast
        self.channel = channel
        self.interval = interval
        self.listeners = 0
        self.task: asyncio.Task[None] | None = None

    async def listen(self) -> AsyncIterator[ServerSentEvent]:
        """The ticker's events for one client; the publisher runs while any client listens.

        Live only: a price is stale a second later, so a reconnect gets no replay.
        """
        # Subscribe first: registered now, so nothing the publisher sends is missed.
        prices = self.broadcast.subscribe(self.channel)
        self.listeners += 1
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._publish())
        try:
            async for event in prices:
                yield event
        finally:
            self.listeners -= 1
            await prices.aclose()

    async def _publish(self) -> None:
        price = 100.0
        while self.listeners:
            price = round(price * random.uniform(0.99, 1.01), 2)
            try:
                await self.broadcast.publish(self.channel, f"{price:.2f}", event="price")
            except BroadcastUnavailable:
                return  # Redis went away: the subscriptions have ended too
            await asyncio.sleep(self.interval)


def make_app(broadcast_url: str | None = None, tick: float = 1.0) -> Router:
    """The routes, with their own Broadcast (tests make a fresh app each)."""
    broadcast = Broadcast(broadcast_url or os.environ.get("CHAT_BROADCAST", "memory://"))
    ticker = Ticker(broadcast, interval=tick)
    app = Router()

    @app.get("/")
    async def page(request: Request) -> Response:
        return Response(PAGE, media_type="text/html")

    @app.post("/chat")
    async def post(request: Request) -> JSONResponse:
        text = (await request.body()).decode("utf-8", "replace").strip()
        if not text:
            raise HTTPError(400, "empty message")
        if len(text) > MAX_MESSAGE:
            raise HTTPError(413, f"messages are limited to {MAX_MESSAGE} characters")
        return JSONResponse({"id": await broadcast.publish("chat", text, event="message")})

    @app.get("/chat/events")
    async def events(request: Request) -> EventSourceResponse:
        # Replay after Last-Event-ID, then live; "resync" if that id is gone.
        messages = broadcast.subscribe("chat", last_event_id=request.last_event_id)
        return EventSourceResponse(messages, retry=1000)

    @app.get("/ticker")
    async def prices(request: Request) -> EventSourceResponse:
        return EventSourceResponse(ticker.listen(), retry=1000)

    return app


app = make_app()
