"""The benchmark app on Starlette + sse-starlette, served by uvicorn or hypercorn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from benchmarks.apps import common

subscribers: set[asyncio.Queue[str]] = set()  # the hand-rolled fan-out people write
NO_PING = 3600  # sse-starlette pings on a fixed timer; keep it out of the way


async def hello(request: Request) -> Response:
    return Response(common.HELLO, media_type="text/plain")


async def big(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("mb", "256")) * 16

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield common.CHUNK

    return StreamingResponse(chunks())


async def sse(request: Request) -> EventSourceResponse:
    count = int(request.query_params["n"])

    async def events() -> AsyncIterator[dict[str, str]]:
        for _ in range(count):
            yield {"data": common.EVENT_DATA}

    return EventSourceResponse(events(), ping=NO_PING)


async def fanout(request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, str]]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        subscribers.add(queue)
        try:
            yield {"data": "ready"}
            while True:
                yield {"data": await queue.get()}
        finally:
            subscribers.discard(queue)

    return EventSourceResponse(events(), ping=NO_PING)


async def publish(request: Request) -> JSONResponse:
    for _ in range(int(request.query_params["n"])):
        for queue in list(subscribers):
            queue.put_nowait(common.EVENT_DATA)
    return JSONResponse({"ok": True})


async def idle(request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, str]]:
        yield {"data": "ready"}
        await asyncio.Event().wait()

    return EventSourceResponse(events(), ping=NO_PING)


async def endless(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield common.CHUNK
            await asyncio.sleep(0)

    return StreamingResponse(common.counted(chunks(), probe=False))


async def probe_await(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()

    return StreamingResponse(common.counted(chunks(), probe=True))


async def probe_busy(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield common.CHUNK  # never awaits

    return StreamingResponse(common.counted(chunks(), probe=True))


async def closed(request: Request) -> JSONResponse:
    return JSONResponse(common.closed_report())


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/big", big),
        Route("/sse", sse),
        Route("/fanout", fanout),
        Route("/publish", publish, methods=["POST"]),
        Route("/idle", idle),
        Route("/endless", endless),
        Route("/probe/await", probe_await),
        Route("/probe/busy", probe_busy),
        Route("/closed", closed),
    ]
)
