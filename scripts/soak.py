"""Soak test: thousands of concurrent, misbehaving clients against one tinystream server.

    python scripts/soak.py                       # 60 s, 1000 clients
    python scripts/soak.py --seconds 30 --clients 1000 --json soak.json

The server runs in a subprocess (so its RSS and descriptors are its own). Clients
on 127.0.0.1 mix plain and keep-alive requests, pipelined requests, chunked
uploads, streaming downloads, SSE subscribers, slow readers, clients that vanish
mid-response with a reset, clients that stop reading entirely, malformed requests
and slow-head clients. Every response is verified byte for byte.

Prints a summary and writes JSON: requests served, responses verified, errors by
kind, server RSS over time, and at the end the server's open descriptors and live
producers, which must be back at their starting values. Exits non-zero on any
verification error, leak, or RSS growth through the run (CI runs 30 s of it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinystream import (  # noqa: E402
    EventSourceResponse,
    JSONResponse,
    Request,
    Response,
    Router,
    ServerSentEvent,
    StreamingResponse,
)
from tinystream.chunked import ChunkedDecoder  # noqa: E402
from tinystream.sse import EventStreamDecoder  # noqa: E402

# Server side ------------------------------------------------------------------

SERVER_OPTIONS = {
    "header_timeout": 1.0,
    "write_stall_timeout": 2.0,
    "keep_alive_timeout": 5.0,
    "access_log": False,
    "max_connections": 20_000,
}
live_producers = 0


def pattern(seed: int, size: int) -> bytes:
    """The deterministic body of /stream: both sides compute it."""
    block = hashlib.sha256(str(seed).encode()).digest() * 128  # 4 KiB
    return (block * (size // len(block) + 1))[:size]


def make_app() -> Router:
    router = Router()
    server_ref: dict[str, Any] = {}

    @router.get("/hello")
    async def hello(request: Request) -> Response:
        return Response("hello world\n")

    @router.get("/echo")
    async def echo(request: Request) -> Response:
        return Response(request.query_params.get("x", ""))

    @router.post("/upload")
    async def upload(request: Request) -> JSONResponse:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return JSONResponse({"sha256": digest.hexdigest(), "size": size})

    def counted(produce: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async def wrapper() -> AsyncIterator[Any]:
            global live_producers
            live_producers += 1
            try:
                async for item in produce:
                    yield item
            finally:
                live_producers -= 1

        return wrapper()

    @router.get("/stream")
    async def stream(request: Request) -> StreamingResponse:
        seed, size = int(request.query_params["seed"]), int(request.query_params["size"])
        body = pattern(seed, size)

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, size, 8192):
                yield body[start : start + 8192]
                await asyncio.sleep(0)

        return StreamingResponse(counted(pieces()))

    @router.get("/endless")
    async def endless(request: Request) -> StreamingResponse:
        async def forever() -> AsyncIterator[bytes]:
            chunk = b"e" * 16384
            while True:
                yield chunk
                await asyncio.sleep(0)

        return StreamingResponse(counted(forever()))

    @router.get("/events")
    async def events(request: Request) -> EventSourceResponse:
        count = int(request.query_params["n"])

        async def produce() -> AsyncIterator[ServerSentEvent]:
            for number in range(1, count + 1):
                yield ServerSentEvent(f"event {number}", id=str(number))
                await asyncio.sleep(0.001)

        return EventSourceResponse(counted(produce()), ping=0.5)

    @router.get("/_stats")
    async def stats(request: Request) -> JSONResponse:
        server = server_ref["server"]
        # /proc is in memory: reading it cannot block the loop.
        status = Path("/proc/self/status").read_text()  # noqa: ASYNC240
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]
        return JSONResponse(
            {
                **server.stats().__dict__,
                "rss": rss,
                "fds": len(os.listdir("/proc/self/fd")),
                "live_producers": live_producers,
            }
        )

    router.server_ref = server_ref  # type: ignore[attr-defined]
    return router


async def serve(port_file: str) -> None:
    import signal

    import tinystream

    app = make_app()
    # A bounded kernel send buffer (accepted sockets inherit it): a client that
    # stops reading is detectable only once the buffers toward it are full, and
    # with Linux's autotuning (up to 4 MB) filling them on a loaded machine can
    # take longer than the soak. 256 KiB keeps the stall proof quick everywhere.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    listener.bind(("127.0.0.1", 0))
    server = await tinystream.start_server(app, sock=listener, **SERVER_OPTIONS)
    app.server_ref["server"] = server  # type: ignore[attr-defined]
    Path(port_file).write_text(str(server.port))  # noqa: ASYNC240 - once, at start-up
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close()


# Client side ------------------------------------------------------------------


# Linux TCP states (include/net/tcp_states.h), the first byte of struct tcp_info.
TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8


class Failure(Exception):
    """A response that did not verify."""


class Soak:
    def __init__(self, port: int, deadline: float) -> None:
        self.port = port
        self.deadline = deadline
        self.served = Counter[str]()
        self.verified = 0
        self.errors = Counter[str]()
        self.samples: list[dict[str, Any]] = []

    async def connect(
        self, recv_buffer: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        if recv_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        return await asyncio.open_connection(sock=sock, limit=recv_buffer or 65536)

    @staticmethod
    async def read_response(
        reader: asyncio.StreamReader, head_only: bool = False
    ) -> tuple[int, dict[str, str], bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if head_only:
            return status, headers, b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            decoder = ChunkedDecoder()
            parts = []
            while not decoder.done:
                data = await reader.read(65536)
                if not data:
                    raise Failure("chunked body cut short")
                parts.append(decoder.feed(data))
            body = b"".join(parts)
        else:
            body = await reader.read()
        return status, headers, body

    def expect(self, condition: bool, kind: str) -> None:
        if not condition:
            raise Failure(kind)
        self.verified += 1

    # Behaviours. Each opens its own connection and verifies what it gets.

    async def plain(self) -> None:
        reader, writer = await self.connect()
        try:
            for _ in range(5):  # keep-alive
                writer.write(b"GET /hello HTTP/1.1\r\nHost: s\r\n\r\n")
                status, _, body = await self.read_response(reader)
                self.expect(status == 200 and body == b"hello world\n", "plain body")
                self.served["plain"] += 1
        finally:
            writer.close()

    async def pipelined(self) -> None:
        reader, writer = await self.connect()
        try:
            writer.write(
                b"".join(b"GET /echo?x=%d HTTP/1.1\r\nHost: s\r\n\r\n" % i for i in range(4))
            )
            for i in range(4):
                status, _, body = await self.read_response(reader)
                self.expect(status == 200 and body == b"%d" % i, "pipelined order")
                self.served["pipelined"] += 1
        finally:
            writer.close()

    async def upload(self) -> None:
        data = random.randbytes(random.randint(1, 300_000))
        reader, writer = await self.connect()
        try:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, len(data), 50_000):
                piece = data[start : start + 50_000]
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            status, _, body = await self.read_response(reader)
            answer = json.loads(body)
            self.expect(
                status == 200
                and answer["sha256"] == hashlib.sha256(data).hexdigest()
                and answer["size"] == len(data),
                "upload digest",
            )
            self.served["upload"] += 1
        finally:
            writer.close()

    async def download(self, slow: bool = False) -> None:
        seed, size = random.randint(0, 10**6), random.randint(1, 400_000)
        reader, writer = await self.connect(recv_buffer=8192 if slow else None)
        try:
            writer.write(b"GET /stream?seed=%d&size=%d HTTP/1.1\r\nHost: s\r\n\r\n" % (seed, size))
            if slow:
                status, _, _ = await self.read_response(reader, head_only=True)
                decoder, parts = ChunkedDecoder(), []
                while not decoder.done:
                    data = await reader.read(4096)
                    if not data:
                        raise Failure("slow download cut short")
                    parts.append(decoder.feed(data))
                    await asyncio.sleep(0.002)  # a slow reader's pace
                body = b"".join(parts)
            else:
                status, _, body = await self.read_response(reader)
            self.expect(status == 200 and body == pattern(seed, size), "download bytes")
            self.served["slow_download" if slow else "download"] += 1
        finally:
            writer.close()

    async def events(self) -> None:
        count = random.randint(1, 200)
        reader, writer = await self.connect()
        try:
            writer.write(
                b"GET /events?n=%d HTTP/1.1\r\nHost: s\r\nAccept: text/event-stream\r\n\r\n" % count
            )
            status, _, body = await self.read_response(reader)
            received = EventStreamDecoder().feed(body)
            expected = [(f"event {i}", str(i)) for i in range(1, count + 1)]
            self.expect(
                status == 200 and [(e.data, e.id) for e in received] == expected, "event sequence"
            )
            self.served["events"] += 1
        finally:
            writer.close()

    async def vanish(self) -> None:
        reader, writer = await self.connect()
        writer.write(b"GET /endless HTTP/1.1\r\nHost: s\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(random.randint(1, 100_000))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, mid-response
        self.served["vanished"] += 1

    async def stop_reading(self) -> None:
        # A raw socket we never read from: the server must cut it off by itself.
        # Reading even once would make this a (slow) reader of an endless stream.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", self.port))
            await loop.sock_sendall(sock, b"GET /endless HTTP/1.1\r\nHost: s\r\n\r\n")
            for _ in range(50):  # up to 25 s, far past the 2 s stall timeout
                await asyncio.sleep(0.5)
                # Queued data hides a reset from recv(); the TCP state does not.
                state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
                if state in (TCP_CLOSE, TCP_CLOSE_WAIT):
                    break  # the server reset or closed the connection: freed
            else:
                raise Failure("a client that stopped reading was never cut off")
            self.expect(True, "stalled client freed")
            self.served["stopped_reading"] += 1
        finally:
            sock.close()

    async def malformed(self) -> None:
        reader, writer = await self.connect()
        try:
            writer.write(
                random.choice(
                    [
                        b"GARBAGE\r\n\r\n",
                        b"GET / HTTP/1.1\r\nHost: s\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                        b"GET /%zz HTTP/1.1\r\nHost: s\r\n\r\n",
                        b"GET / HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n",
                    ]
                )
            )
            data = await asyncio.wait_for(reader.read(), 10)
            self.expect(re.match(rb"HTTP/1\.1 4\d\d ", data) is not None, "malformed refused")
            self.served["malformed"] += 1
        finally:
            writer.close()

    async def slow_head(self) -> None:
        reader, writer = await self.connect()
        answer = asyncio.ensure_future(reader.read())
        try:
            for byte in b"GET /hello HTTP/1.1\r\nHost: s\r\n":
                if answer.done():
                    break  # the server answered: stop sending
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)  # a slowloris pace: the head never completes in time
            data = await asyncio.wait_for(answer, 10)
            self.expect(data.startswith(b"HTTP/1.1 408"), "slow head cut off")
            self.served["slow_head"] += 1
        finally:
            answer.cancel()
            writer.close()

    BEHAVIOURS = [
        ("plain", 30),
        ("pipelined", 10),
        ("upload", 8),
        ("download", 12),
        ("slow_download", 4),
        ("events", 12),
        ("vanish", 8),
        ("stop_reading", 1),
        ("malformed", 8),
        ("slow_head", 1),
    ]

    async def client(self) -> None:
        names, weights = zip(*self.BEHAVIOURS, strict=True)
        while time.monotonic() < self.deadline:
            name = random.choices(names, weights)[0]
            action = self.download(slow=True) if name == "slow_download" else getattr(self, name)()
            try:
                await asyncio.wait_for(action, 60)  # generous: a loaded machine is slow
            except Failure as failure:
                self.errors[f"verify: {failure}"] += 1
            except (
                OSError,
                asyncio.TimeoutError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                self.errors[f"{name}: {type(exc).__name__}"] += 1

    async def stats(self) -> dict[str, Any]:
        reader, writer = await self.connect()
        try:
            writer.write(b"GET /_stats HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
            _, _, body = await self.read_response(reader)
            return dict(json.loads(body))
        finally:
            writer.close()

    async def sample(self) -> None:
        start = time.monotonic()
        while time.monotonic() < self.deadline:
            stats = await self.stats()
            self.samples.append(
                {
                    "t": round(time.monotonic() - start, 1),
                    "rss": stats["rss"],
                    "connections": stats["connections"],
                }
            )
            await asyncio.sleep(1)


async def run(seconds: float, clients: int) -> dict[str, Any]:
    port_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-port-{os.getpid()}"
    port_file.unlink(missing_ok=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(port_file)
    )
    try:
        for _ in range(200):  # the server writes its port once it listens
            if port_file.exists() and port_file.read_text():
                break
            await asyncio.sleep(0.05)
        soak = Soak(int(port_file.read_text()), time.monotonic() + seconds)
        before = await soak.stats()
        await asyncio.gather(soak.sample(), *(soak.client() for _ in range(clients)))
        # After the load: every connection gone (the stats request itself aside)
        # and every producer closed, within the stall and keep-alive timeouts.
        after = await soak.stats()
        for _ in range(100):
            if (
                after["connections"] <= 1
                and after["live_producers"] == 0
                and after["fds"] <= before["fds"]
            ):
                break
            await asyncio.sleep(0.1)
            after = await soak.stats()
    finally:
        process.terminate()
        await process.wait()
        port_file.unlink(missing_ok=True)
    rss = [s["rss"] for s in soak.samples]
    third = max(len(rss) // 3, 1)
    middle = sorted(rss[third : 2 * third] or rss)[len(rss[third : 2 * third] or rss) // 2]
    late = sorted(rss[-third:])[len(rss[-third:]) // 2]
    return {
        "seconds": seconds,
        "clients": clients,
        "served": dict(soak.served),
        "requests_served": sum(soak.served.values()),
        "responses_verified": soak.verified,
        "errors": dict(soak.errors),
        "server_rss": soak.samples,
        "peak_rss": max(rss) if rss else 0,
        "rss_middle_median": middle,
        "rss_late_median": late,
        "outcomes": after["outcomes"],
        "start": {"fds": before["fds"], "live_producers": before["live_producers"]},
        "end": {
            "fds": after["fds"],
            "live_producers": after["live_producers"],
            "connections": after["connections"],
        },
    }


def judge(result: dict[str, Any]) -> list[str]:
    problems = []
    verify_errors = {k: v for k, v in result["errors"].items() if k.startswith("verify")}
    if verify_errors:
        problems.append(f"verification errors: {verify_errors}")
    # Transport errors and timeouts come from deliberate misbehaviour or an overloaded
    # machine; a hung or broken server makes far more than 1 % of them.
    other = sum(v for k, v in result["errors"].items() if not k.startswith("verify"))
    if other > max(10, result["requests_served"] // 100):
        problems.append(f"too many client errors: {result['errors']}")
    if result["end"]["fds"] > result["start"]["fds"]:
        problems.append(f"descriptor leak: {result['start']['fds']} -> {result['end']['fds']}")
    if result["end"]["live_producers"] != result["start"]["live_producers"]:
        problems.append(f"producers left running: {result['end']['live_producers']}")
    if result["end"]["connections"] > 1:
        problems.append(f"connections left open: {result['end']['connections']}")
    if result["rss_late_median"] > result["rss_middle_median"] * 1.25 + 20 * 2**20:
        problems.append(
            f"RSS kept growing: {result['rss_middle_median']} -> {result['rss_late_median']}"
        )
    stopped = result["served"].get("stopped_reading", 0)
    if not stopped:
        problems.append("no stalled client was exercised")
    elif result["outcomes"].get("stalled", 0) < stopped:
        problems.append(
            f"{stopped} clients stopped reading, the server cut off only {result['outcomes'].get('stalled', 0)}"
        )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=Path("soak.json"))
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.clients * 2 + 100)), hard))
    result = asyncio.run(run(args.seconds, args.clients))
    args.json.write_text(json.dumps(result, indent=1))
    problems = judge(result)
    print(
        f"soak: {result['seconds']:.0f} s, {result['clients']} clients, "
        f"{result['requests_served']} requests served, {result['responses_verified']} responses verified"
    )
    print(f"  by behaviour: {result['served']}")
    print(f"  server outcomes: {result['outcomes']}")
    print(f"  errors: {result['errors'] or 'none'}")
    print(
        f"  server RSS: peak {result['peak_rss'] / 2**20:.1f} MiB, middle {result['rss_middle_median'] / 2**20:.1f} MiB, "
        f"late {result['rss_late_median'] / 2**20:.1f} MiB"
    )
    print(
        f"  descriptors {result['start']['fds']} -> {result['end']['fds']}, live producers {result['start']['live_producers']} -> {result['end']['live_producers']}"
    )
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
