"""Side-by-side benchmark: tinystream against the servers people pick instead, in one run.

    pip install -e '.[bench]'          # the peers; plus Debian's wrk for scenario 1
    python scripts/bench.py            # every scenario, 3 repetitions (about 15 minutes)
    python scripts/bench.py --quick    # tiny sizes, 1 repetition: checks every scenario works

Fairness on a shared 2-core machine: each measurement starts a fresh server
process pinned to CPU 0 (taskset), the load generator runs on CPU 1, servers are
interleaved within each repetition (A B C A B C ...) so drift hits all of them,
and every measurement verifies its result (exact byte and event counts) before
it counts. Tables give each server's median, min-max, and its ratio to
tinystream; --json writes every raw figure.

Servers: tinystream; tinystream-asgi, uvicorn (h11 + asyncio, and httptools + uvloop)
and hypercorn, all four running the same Starlette + sse-starlette app; aiohttp + aiohttp-sse; and a "ceiling": a few
dozen lines of asyncio.Protocol writing pre-formatted bytes (scenarios 1-3 only).
The apps are in benchmarks/apps/ and behave the same in every framework.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = "0", "1"


def pinned(cpu: str, command: list[str]) -> list[str]:
    return (
        ["taskset", "-c", cpu, *command]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else command
    )  # type: ignore[operator]


def uvicorn(port: int, http: str, loop: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.apps.starlette_app:app",
        "--port",
        str(port),
        "--http",
        http,
        "--loop",
        loop,
        "--no-access-log",
        "--log-level",
        "warning",
    ]


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "tinystream": lambda port: [
        sys.executable,
        "-m",
        "tinystream",
        "benchmarks.apps.tinystream_app:app",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ],
    # The same Starlette + sse-starlette app as the uvicorn and hypercorn rows.
    "tinystream-asgi": lambda port: [
        sys.executable,
        "-m",
        "tinystream",
        "benchmarks.apps.starlette_app:app",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ],
    "uvicorn-h11": lambda port: uvicorn(port, "h11", "asyncio"),
    "uvicorn-httptools-uvloop": lambda port: uvicorn(port, "httptools", "uvloop"),
    "hypercorn": lambda port: [
        sys.executable,
        "-m",
        "hypercorn",
        "benchmarks.apps.starlette_app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ],
    "aiohttp": lambda port: [sys.executable, "-m", "benchmarks.apps.aiohttp_app", str(port)],
    "ceiling": lambda port: [sys.executable, "-m", "benchmarks.apps.ceiling", str(port)],
}
CEILING_SCENARIOS = {"small", "stream", "sse"}


class Invalid(Exception):
    """A measurement whose result did not verify (it does not count)."""


class Server:
    """A fresh server process for one measurement."""

    def __init__(self, name: str) -> None:
        self.name = name
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            pinned(SERVER_CPU, SERVERS[name](self.port)),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:  # up when it accepts a connection (an external process: no other signal)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.05)

    @property
    def rss(self) -> int:
        """Resident memory of the server process and its children, in bytes."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0
        for pid in pids:
            status = Path(f"/proc/{pid}/status")
            if status.exists():
                match = re.search(r"VmRSS:\s+(\d+)", status.read_text())
                total += int(match.group(1)) * 1024 if match else 0
        return total

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()  # a server hung on shutdown (an open stream, say)
            self.process.wait()


def run(command: list[str], timeout: float) -> str:
    return subprocess.run(
        pinned(CLIENT_CPU, command), capture_output=True, text=True, timeout=timeout, check=True
    ).stdout


def http_get(port: int, path: str, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def json_body(raw: bytes) -> Any:
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        from tinystream.chunked import ChunkedDecoder

        body = ChunkedDecoder().feed(body)
    return json.loads(body)


# Scenarios: each takes a running server and the sizes, returns {figure: value}.


def small(server: Server, size: dict[str, Any]) -> dict[str, float]:
    raw = http_get(server.port, "/")
    if not raw.endswith(b"\r\n\r\nhello, world\n"):
        raise Invalid(f"bad body {raw[-40:]!r}")
    out = run(
        [
            "wrk",
            "-t1",
            "-c64",
            f"-d{size['seconds']}s",
            "--latency",
            f"http://127.0.0.1:{server.port}/",
        ],
        size["seconds"] + 30,
    )
    if "Non-2xx" in out or (
        "Socket errors" in out and re.search(r"(connect|read|write|timeout) [1-9]", out)
    ):
        raise Invalid(out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests_per_s": rps,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


def stream(server: Server, size: dict[str, Any]) -> dict[str, float]:
    expected = size["mb"] * 1024 * 1024
    out = run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            f"http://127.0.0.1:{server.port}/big?mb={size['mb']}",
        ],
        300,
    )
    got, seconds = out.split()
    if int(got) != expected:
        raise Invalid(f"{got} bytes, expected {expected}")
    return {"mb_per_s": expected / 1e6 / float(seconds)}


def sse(server: Server, size: dict[str, Any]) -> dict[str, float]:
    count = size["events"]
    started = time.perf_counter()
    out = subprocess.run(
        f"curl -sN 'http://127.0.0.1:{server.port}/sse?n={count}' | grep -c '^data: '",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - started
    if int(out.stdout.strip() or 0) != count:
        raise Invalid(f"{out.stdout.strip()} events, expected {count}")
    return {"events_per_s": count / seconds}


async def _subscribers(
    port: int, count: int, path: str
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        connections.append((reader, writer))
    for reader, _ in connections:  # subscribed: each said "ready"
        await asyncio.wait_for(reader.readuntil(b"data: ready"), 30)
    return connections


def fanout(server: Server, size: dict[str, Any]) -> dict[str, float]:
    subscribers, events = size["subscribers"], size["fanout_events"]

    async def measure() -> float:
        connections = await _subscribers(server.port, subscribers, "/fanout")

        async def count(reader: asyncio.StreamReader) -> None:
            seen, tail = 0, b""
            while seen < events:
                data = await asyncio.wait_for(reader.read(65536), 60)
                if not data:
                    raise Invalid("a subscriber's stream ended")
                window = tail + data
                seen += window.count(b"data: x") - tail.count(b"data: x")
                tail = window[-8:]

        counters = [asyncio.ensure_future(count(reader)) for reader, _ in connections]
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            f"POST /publish?n={events} HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await reader.read()
        writer.close()
        await asyncio.gather(*counters)
        seconds = time.perf_counter() - started
        for _, w in connections:
            w.close()
        return seconds

    seconds = asyncio.run(measure())
    return {"delivered_per_s": subscribers * events / seconds, "rss_mib": server.rss / 2**20}


def idle(server: Server, size: dict[str, Any]) -> dict[str, float]:
    count = size["idle"]
    http_get(server.port, "/")  # warm: code paths loaded before the baseline
    before = server.rss

    async def hold() -> float:
        connections = await _subscribers(server.port, count, "/idle")
        await asyncio.sleep(0.5)  # let allocations settle before reading RSS
        rss = server.rss
        for _, writer in connections:
            writer.close()
        return rss

    after = asyncio.run(hold())
    return {"kib_per_connection": (after - before) / count / 1024}


def slow_client(server: Server, size: dict[str, Any]) -> dict[str, float]:
    rate, seconds = 256 * 1024, size["slow_seconds"]

    async def measure() -> dict[str, float]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, b"GET /endless HTTP/1.1\r\nHost: b\r\n\r\n")
        await loop.sock_recv(sock, 65536)
        start_rss = server.rss
        started = time.monotonic()
        received = 0
        while time.monotonic() - started < seconds:  # read at 256 KiB/s
            received += len(await loop.sock_recv(sock, 16384))
            await asyncio.sleep(max(0.0, started + received / rate - time.monotonic()))
        growth = server.rss - start_rss
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # leave (a reset)
        left = time.monotonic()
        answered = await loop.run_in_executor(None, lambda: http_get(server.port, "/", timeout=5))
        responsive = time.monotonic() - left
        if not answered.endswith(b"hello, world\n"):
            raise Invalid("no answer after the slow client left")
        stopped = 0.0
        for _ in range(50):  # the producer must stop: /closed reports live producers
            report = json_body(
                await loop.run_in_executor(
                    None, lambda: http_get(server.port, "/closed", timeout=5)
                )
            )
            if report["live"] == 0:
                stopped = 1.0
                break
            await asyncio.sleep(0.02)
        return {
            "rss_growth_mib": growth / 2**20,
            "answer_after_leave_s": responsive,
            "producer_stopped": stopped,
        }

    return asyncio.run(measure())


def disconnect(server: Server, size: dict[str, Any]) -> dict[str, float]:
    figures = {}
    # A FIN is how browsers, curl and httpx leave; a reset is how a crashed client does.
    for how, kind in itertools.product(("fin", "reset"), ("await", "busy")):
        delays = []
        for _ in range(size["trials"]):
            try:
                before = json_body(http_get(server.port, "/closed", timeout=2))["count"]
            except (OSError, ValueError):
                delays.append(float("inf"))  # starved by an earlier trial: never answers
                break
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(f"GET /probe/{kind} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
                sock.recv(65536)
                if how == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                closed_at = time.time()
            delay = float("inf")  # never, within 2 s (or the server stopped answering)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    report = json_body(http_get(server.port, "/closed", timeout=2))
                except (OSError, ValueError):
                    break
                if report["count"] > before:
                    delay = report["closed"][-1] - closed_at
                    break
                time.sleep(0.002)
            delays.append(delay)
            if delay == float("inf"):
                break  # a starved server will not answer the next trial either
        figures[f"{how}_{kind}_ms"] = statistics.median(delays) * 1000
    return figures


SCENARIOS: dict[str, tuple[str, Callable[[Server, dict[str, Any]], dict[str, float]]]] = {
    "small": ("1. small response, keep-alive, 64 connections (wrk)", small),
    "stream": ("2. one chunked download in 64 KiB chunks", stream),
    "sse": ("3. one client reading small SSE events (64 B)", sse),
    "fanout": ("4. fan-out: subscribers x broadcast events", fanout),
    "idle": ("5. idle SSE connections", idle),
    "slow": ("6. a client reading 256 KiB/s from an endless stream", slow_client),
    "disconnect": ("7. client's close (FIN or reset) -> producer's finally", disconnect),
}
FULL = {
    "seconds": 10,
    "mb": 256,
    "events": 200_000,
    "subscribers": 1000,
    "fanout_events": 100,
    "idle": 2000,
    "slow_seconds": 15,
    "trials": 20,
}
QUICK = {
    "seconds": 1,
    "mb": 8,
    "events": 2000,
    "subscribers": 50,
    "fanout_events": 10,
    "idle": 100,
    "slow_seconds": 2,
    "trials": 3,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one repetition: a correctness smoke"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", type=Path, default=Path("bench.json"))
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--from-json", type=Path, help="only render the tables of an earlier run")
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="KEY=N",
        help=f"override one size (keys: {', '.join(FULL)}); repeatable",
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        for scenario, by_server in saved["results"].items():
            print_table(SCENARIOS[scenario][0], by_server)
        if args.markdown:
            args.markdown.write_text(markdown(saved))
        return 0
    if "small" in args.scenarios.split(",") and shutil.which("wrk") is None:
        print(
            "bench: scenario 1 needs wrk: apt-get install wrk (or --scenarios without 'small')",
            file=sys.stderr,
        )
        return 2
    size = dict(QUICK if args.quick else FULL)
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in size or not value.isdigit():
            parser.error(f"--size wants KEY=N with KEY one of {', '.join(size)}, got {item!r}")
        size[key] = int(value)
    repeat = 1 if args.quick else args.repeat
    servers = args.servers.split(",")
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    failures = []
    for scenario in args.scenarios.split(","):
        title, measure = SCENARIOS[scenario]
        results[scenario] = {}
        for _ in range(repeat):
            for name in servers:  # interleaved: A B C, A B C ...
                if name == "ceiling" and scenario not in CEILING_SCENARIOS:
                    continue
                server = Server(name)
                try:
                    figures = measure(server, size)
                    results[scenario].setdefault(name, []).append(figures)
                except (Invalid, subprocess.SubprocessError, OSError, asyncio.TimeoutError) as exc:
                    failures.append(f"{scenario}/{name}: {type(exc).__name__}: {exc}"[:300])
                finally:
                    server.stop()
        print_table(title, results[scenario])
    args.json.write_text(
        json.dumps(
            {"size": size, "repeat": repeat, "results": results, "failures": failures}, indent=1
        )
    )
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


def machine() -> str:
    import platform

    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = match.group(1).strip() if match else cpu
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def markdown(saved: dict[str, Any]) -> str:
    lines = [
        f"Run: {saved.get('date', '?')} on {saved.get('machine', '?')}; "
        f"{saved['repeat']} repetition(s), sizes {saved['size']}.",
        "",
    ]
    for scenario, by_server in saved["results"].items():
        lines += [
            f"### {SCENARIOS[scenario][0]}",
            "",
            "| server | figure | median | min - max | vs tinystream |",
            "|---|---|---|---|---|",
        ]
        figures = sorted({key for runs in by_server.values() for run in runs for key in run})
        for key in figures:
            base_runs = [r[key] for r in by_server.get("tinystream", []) if key in r]
            base = statistics.median(base_runs) if base_runs else None
            for name, runs in by_server.items():
                values = [r[key] for r in runs if key in r]
                if not values:
                    continue
                median = statistics.median(values)
                ratio = f"{median / base:.2f}x" if base else ""
                lines.append(
                    f"| {name} | {key} | {median:,.2f} | {min(values):,.2f} - {max(values):,.2f} | {ratio} |"
                )
        lines.append("")
    if saved.get("failures"):
        lines += ["Measurements that did not verify (not counted):", ""]
        lines += [f"- {failure}" for failure in saved["failures"]]
    return "\n".join(lines) + "\n"


def print_table(title: str, by_server: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{title}")
    figures = sorted({key for runs in by_server.values() for run in runs for key in run})
    base = (
        {key: statistics.median(r[key] for r in by_server.get("tinystream", [])) for key in figures}
        if "tinystream" in by_server
        else {}
    )
    for key in figures:
        print(f"  {key}")
        for name, runs in by_server.items():
            values = [r[key] for r in runs if key in r]
            if not values:
                continue
            median = statistics.median(values)
            ratio = f"{median / base[key]:6.2f}x" if base.get(key) else "      "
            print(
                f"    {name:26s} {median:12.2f}   ({min(values):.2f} - {max(values):.2f})   {ratio} of tinystream"
            )


if __name__ == "__main__":
    sys.exit(main())
