"""tinystream demo: streams that really stream.

Run it:   python -m tinystream examples.demo:app --port 8000
Then try:
  curl -N http://127.0.0.1:8000/clock          one line a second, as it happens
  curl -N http://127.0.0.1:8000/count?n=5      a sync generator, run in a worker thread
  curl -T big.iso http://127.0.0.1:8000/upload a streamed upload, counted as it arrives
  curl -N http://127.0.0.1:8000/clock, then Ctrl-C curl: the server log shows the
      producer's `finally` ran at once ("clock stopped") and the access line says client_gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

from tinystream import HTTPError, JSONResponse, Request, Response, Router, StreamingResponse

logger = logging.getLogger("demo")
app = Router()

PAGE = """<!doctype html>
<meta charset="utf-8"><title>tinystream demo</title>
<h1>tinystream demo</h1>
<p>This page reads <code>/clock</code> with <code>fetch</code>
 and shows each chunk as it arrives.</p>
<pre id="out"></pre>
<script>
(async () => {
  const out = document.getElementById("out");
  const response = await fetch("/clock");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    out.textContent += value;
  }
})();
</script>
"""


@app.get("/")
async def index(request: Request) -> Response:
    return Response(PAGE, media_type="text/html")


@app.get("/clock")
async def clock(request: Request) -> StreamingResponse:
    async def ticks() -> AsyncIterator[str]:
        try:
            while not request.is_shutting_down():
                yield time.strftime("%H:%M:%S\n")
                await asyncio.sleep(1)
            yield "server is shutting down, bye\n"
        finally:
            logger.info("clock stopped")

    return StreamingResponse(ticks(), media_type="text/plain")


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
