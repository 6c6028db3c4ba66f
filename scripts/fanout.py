"""Fan-out figures: events delivered per second to many SSE subscribers, and memory per idle one.

    python scripts/fanout.py --subscribers 1000 --events 100 [--broadcast redis://127.0.0.1:6379/0]

The server runs in a subprocess (its RSS is its own): GET /events subscribes
through Broadcast, POST /publish?n=N publishes N events in one go (server side,
so the publisher is not what is measured). The client opens the subscribers on
raw sockets, measures the server's RSS with all of them idle, publishes, and
times until every subscriber has counted every event.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_app(url: str) -> object:
    from tinystream import EventSourceResponse, JSONResponse, Request, Router
    from tinystream.broadcast import Broadcast

    broadcast = Broadcast(url, queue_size=100_000)
    router = Router()

    @router.get("/events")
    async def events(request: Request) -> EventSourceResponse:
        return EventSourceResponse(broadcast.subscribe("bench"), ping=None)

    @router.post("/publish")
    async def publish(request: Request) -> JSONResponse:
        for number in range(int(request.query_params["n"])):
            await broadcast.publish("bench", f"event {number} " + "x" * 48)
        return JSONResponse({"ok": True})

    @router.get("/rss")
    async def rss(request: Request) -> JSONResponse:
        status = Path("/proc/self/status").read_text()  # noqa: ASYNC240 - /proc is memory
        match = re.search(r"VmRSS:\s+(\d+)", status)
        return JSONResponse({"rss": int(match.group(1)) * 1024 if match else 0})

    return router


async def request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    data = await reader.read()
    writer.close()
    return data


async def measure(port: int, subscribers: int, events: int) -> dict[str, float]:
    rss = lambda raw: int(re.search(rb'"rss":(\d+)', raw).group(1))  # noqa: E731
    get_rss = b"GET /rss HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    before = rss(await request(port, get_rss))
    connections = []
    for _ in range(subscribers):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: b\r\n\r\n")
        connections.append((reader, writer))
    for reader, _ in connections:
        await reader.readuntil(b"id: ")  # the head, then the subscription's position marker
    idle = rss(await request(port, get_rss))

    async def count(reader: asyncio.StreamReader) -> None:
        seen = 0
        tail = b""
        while seen < events:
            data = tail + await reader.read(65536)
            seen += data.count(b"data: ")
            tail = data[-5:]  # a marker split across reads is counted once
            seen -= tail.count(b"data: ")
        return None

    counters = [asyncio.ensure_future(count(reader)) for reader, _ in connections]
    started = time.perf_counter()
    await request(
        port,
        b"POST /publish?n=%d HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        % events,
    )
    await asyncio.gather(*counters)
    elapsed = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return {
        "subscribers": subscribers,
        "events": events,
        "seconds": elapsed,
        "delivered_per_second": subscribers * events / elapsed,
        "idle_bytes_per_subscriber": (idle - before) / subscribers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--broadcast", default="memory://")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        import tinystream

        tinystream.run(make_app(args.broadcast), port=args.serve, access_log=False)  # type: ignore[arg-type]
        return 0
    import resource
    import socket
    import subprocess

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.subscribers * 2 + 100), hard))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--broadcast", args.broadcast],
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stderr is not None
        server.stderr.readline()  # "tinystream listening on ...": it is up
        result = asyncio.run(measure(port, args.subscribers, args.events))
    finally:
        server.terminate()
        server.wait()
    print(
        f"fan-out ({args.broadcast}): {result['subscribers']} subscribers x {result['events']} events "
        f"in {result['seconds']:.2f} s = {result['delivered_per_second']:,.0f} events delivered/s; "
        f"idle subscriber: {result['idle_bytes_per_subscriber'] / 1024:.1f} KiB of server RSS"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
