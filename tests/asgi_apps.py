"""Real Starlette + sse-starlette and FastAPI apps for the ASGI tests (in process and CLI).

Each app records what its streams went through in a :class:`Record`, so tests
wait on events instead of sleeping: ``started`` when a generator yields its first
item, ``finished`` (with the loop time) when its ``finally`` ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

CHUNK = b"s" * 16384


class Record:
    """What the generators of one app did; made fresh per test with :func:`reset`."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.finished_at: list[float] = []
        self.pulled = 0
        self.lifespan: list[str] = []

    def finish(self) -> None:
        self.finished_at.append(asyncio.get_running_loop().time())
        self.finished.set()


record = Record()


def reset() -> Record:
    global record
    record = Record()
    return record


async def idle_events() -> AsyncIterator[dict[str, str]]:
    """One event, then waiting for ever for the next (as an LLM relay waits for a token)."""
    try:
        yield {"data": "first"}
        record.started.set()
        await asyncio.Event().wait()
    finally:
        record.finish()


async def busy_chunks() -> AsyncIterator[bytes]:
    """Chunks for ever, never awaiting (starlette#1775: cannot be cancelled where it runs)."""
    try:
        while True:
            record.pulled += 1
            record.started.set()
            yield CHUNK
    finally:
        record.finish()


async def events(request: Request) -> EventSourceResponse:
    return EventSourceResponse(idle_events(), ping=3600)


async def busy(request: Request) -> StreamingResponse:
    return StreamingResponse(busy_chunks(), media_type="application/octet-stream")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello, world\n")


async def sized(request: Request) -> Response:
    return Response(b"0123456789", media_type="application/octet-stream")


starlette_app = Starlette(
    routes=[
        Route("/", hello),
        Route("/events", events),
        Route("/busy", busy),
        Route("/sized", sized),
    ]
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    record.lifespan.append("startup")
    print("lifespan startup", file=sys.stderr, flush=True)
    yield {"greeting": "hello from lifespan"}
    record.lifespan.append("shutdown")
    print("lifespan shutdown", file=sys.stderr, flush=True)


fastapi_app = FastAPI(lifespan=lifespan)


@fastapi_app.get("/")
async def fastapi_hello(request: Request) -> dict[str, str]:
    return {"greeting": request.state.greeting}


@fastapi_app.get("/events")
async def fastapi_events() -> EventSourceResponse:
    async def produce() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"data": "first"}
            record.started.set()
            await asyncio.Event().wait()
        finally:
            record.finish()
            print("generator finally", file=sys.stderr, flush=True)

    return EventSourceResponse(produce(), ping=3600)


@fastapi_app.get("/busy")
async def fastapi_busy() -> StreamingResponse:
    return StreamingResponse(busy_chunks())


@contextlib.asynccontextmanager
async def failing_lifespan(app: Starlette) -> AsyncIterator[None]:
    raise RuntimeError("the database is not reachable")
    yield


failing_app = Starlette(routes=[Route("/", hello)], lifespan=failing_lifespan)
