"""An SSE clock: the smallest Server-Sent Events stream, and what each field does.

What it teaches: an :class:`~tinystream.EventSourceResponse` turns an async
generator of :class:`~tinystream.ServerSentEvent` into a ``text/event-stream``
(WHATWG HTML §9.2). Each event is a block of ``field: value`` lines ended by an
empty line; here ``event: tick`` names it, ``id:`` numbers it and ``data:`` carries
the time. ``retry: 2000`` (sent first) tells the browser to reconnect 2 s after
the stream breaks, and to send the last id it saw as ``Last-Event-ID``: the
generator starts counting from there. With ``ping=5``, a comment line ``: ping``
goes out after 5 s without an event (none here: a tick every second resets the
timer). The generator's ``finally`` runs the moment the client leaves.

Run it:   python -m tinystream examples.sse_clock:app
Then try:
  curl -N http://127.0.0.1:8000/clock                      the raw stream, a tick a second
  curl -N -H 'Last-Event-ID: 41' http://127.0.0.1:8000/clock   resume: ids go on from 42
  curl -N 'http://127.0.0.1:8000/clock?every=8'            an event every 8 s: pings between
  open http://127.0.0.1:8000/ in a browser                 an EventSource page; stop and restart
                                                           the server, and watch it reconnect
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from tinystream import EventSourceResponse, HTTPError, Request, Response, Router, ServerSentEvent

logger = logging.getLogger("examples.sse_clock")

PAGE = """<!doctype html>
<meta charset="utf-8"><title>SSE clock</title>
<h1 id="time">…</h1><p id="state"></p>
<script>
const clock = new EventSource("/clock");
const state = document.getElementById("state");
clock.addEventListener("tick", e => {
  document.getElementById("time").textContent = e.data;
  state.textContent = "event #" + e.lastEventId;
});
clock.onerror = () => state.textContent = "connection lost: reconnecting…";
</script>
"""

app = Router()


@app.get("/")
async def page(request: Request) -> Response:
    return Response(PAGE, media_type="text/html")


@app.get("/clock")
async def clock(request: Request) -> EventSourceResponse:
    try:
        every = float(request.query_params.get("every", "1"))
        start = int(request.last_event_id or 0) + 1  # a reconnecting browser says where it was
    except ValueError:
        raise HTTPError(400, "every must be a number, Last-Event-ID an integer") from None
    if not 0.01 <= every <= 3600:
        raise HTTPError(400, "every must be from 0.01 to 3600 seconds")

    async def ticks() -> AsyncIterator[ServerSentEvent]:
        number = start
        try:
            while True:
                yield ServerSentEvent(time.strftime("%H:%M:%S"), event="tick", id=str(number))
                number += 1
                await asyncio.sleep(every)
        finally:
            logger.info("clock for %s stopped after event %d", request.client, number - 1)

    return EventSourceResponse(ticks(), ping=5, retry=2000)
