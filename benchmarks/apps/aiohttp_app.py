"""The benchmark app on aiohttp + aiohttp-sse (default settings)."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web
from aiohttp_sse import sse_response

from benchmarks.apps import common

subscribers: set[asyncio.Queue[str]] = set()


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=common.HELLO, content_type="text/plain")


async def big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(int(request.query.get("mb", "256")) * 16):
        await response.write(common.CHUNK)
    await response.write_eof()
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    async with sse_response(request) as stream:
        for _ in range(int(request.query["n"])):
            await stream.send(common.EVENT_DATA)
    return stream


async def fanout(request: web.Request) -> web.StreamResponse:
    queue: asyncio.Queue[str] = asyncio.Queue()
    subscribers.add(queue)
    try:
        async with sse_response(request) as stream:
            await stream.send("ready")
            while True:
                await stream.send(await queue.get())
    finally:
        subscribers.discard(queue)
    return stream


async def publish(request: web.Request) -> web.Response:
    for _ in range(int(request.query["n"])):
        for queue in list(subscribers):
            queue.put_nowait(common.EVENT_DATA)
    return web.json_response({"ok": True})


async def idle(request: web.Request) -> web.StreamResponse:
    async with sse_response(request) as stream:
        await stream.send("ready")
        await asyncio.Event().wait()
    return stream


async def streamed(request: web.Request, busy: bool, probe: bool) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    common.producer_started()
    try:
        if probe and not busy:
            await response.write(b"first")
            await asyncio.Event().wait()
        while True:
            await response.write(common.CHUNK)
    finally:
        common.producer_finished(probe)


async def endless(request: web.Request) -> web.StreamResponse:
    return await streamed(request, busy=False, probe=False)


async def probe_await(request: web.Request) -> web.StreamResponse:
    return await streamed(request, busy=False, probe=True)


async def probe_busy(request: web.Request) -> web.StreamResponse:
    return await streamed(request, busy=True, probe=True)


async def closed(request: web.Request) -> web.Response:
    return web.json_response(common.closed_report())


def main(port: int) -> None:
    app = web.Application()
    app.add_routes(
        [
            web.get("/", hello),
            web.get("/big", big),
            web.get("/sse", sse),
            web.get("/fanout", fanout),
            web.post("/publish", publish),
            web.get("/idle", idle),
            web.get("/endless", endless),
            web.get("/probe/await", probe_await),
            web.get("/probe/busy", probe_busy),
            web.get("/closed", closed),
        ]
    )
    print(f"aiohttp listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
