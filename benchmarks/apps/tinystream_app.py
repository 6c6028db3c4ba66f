"""The benchmark app on tinystream (see common.py for the endpoints)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from benchmarks.apps import common
from tinystream import (
    EventSourceResponse,
    JSONResponse,
    Request,
    Response,
    Router,
    StreamingResponse,
)
from tinystream.broadcast import Broadcast

app = Router()
hub = Broadcast("memory://", queue_size=100_000)


@app.get("/")
async def hello(request: Request) -> Response:
    return Response(common.HELLO, media_type="text/plain")


@app.get("/big")
async def big(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("mb", "256")) * 16

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield common.CHUNK

    return StreamingResponse(chunks())


@app.get("/sse")
async def sse(request: Request) -> EventSourceResponse:
    count = int(request.query_params["n"])

    async def events() -> AsyncIterator[str]:
        for _ in range(count):
            yield common.EVENT_DATA

    return EventSourceResponse(events(), ping=None)


@app.get("/fanout")
async def fanout(request: Request) -> EventSourceResponse:
    subscription = hub.subscribe("bench")

    async def events() -> AsyncIterator[object]:
        yield "ready"
        async for event in subscription:
            if event.data is not None:
                yield event

    return EventSourceResponse(events(), ping=None)


@app.post("/publish")
async def publish(request: Request) -> JSONResponse:
    for _ in range(int(request.query_params["n"])):
        await hub.publish("bench", common.EVENT_DATA)
    return JSONResponse({"ok": True})


@app.get("/idle")
async def idle(request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[str]:
        yield "ready"
        await asyncio.Event().wait()

    return EventSourceResponse(events(), ping=None)


@app.get("/endless")
async def endless(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield common.CHUNK
            await asyncio.sleep(0)

    return StreamingResponse(common.counted(chunks(), probe=False))


@app.get("/probe/await")
async def probe_await(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()

    return StreamingResponse(common.counted(chunks(), probe=True))


@app.get("/probe/busy")
async def probe_busy(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield common.CHUNK  # never awaits

    return StreamingResponse(common.counted(chunks(), probe=True))


@app.get("/closed")
async def closed(request: Request) -> JSONResponse:
    return JSONResponse(common.closed_report())
