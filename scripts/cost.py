"""Deterministic cost figures: CPU instructions per request cycle, SSE event and fan-out delivery.

    python scripts/cost.py                    # measure under callgrind, compare with the baseline
    python scripts/cost.py --update           # measure and write the baseline (a deliberate change)
    python scripts/cost.py --run request 500  # one workload, natively (what valgrind runs)
    python scripts/cost.py --profile sse 20000   # cProfile of one workload

Wall-clock figures on a shared machine move 2-3x during a day (docs/benchmarks.md);
instruction counts do not. Each workload runs in-process on a fake transport (no
sockets, no I/O wait) with the benchmark's own app (benchmarks/apps/tinystream_app.py):

- ``request``: keep-alive ``GET /`` cycles on one connection (h11 parses each one);
- ``sse``: one ``GET /sse?n=N`` event stream, per event;
- ``fanout``: ``FANOUT_SUBSCRIBERS`` ``GET /fanout`` streams and N broadcast events, per
  delivery (one event to one subscriber).

Each figure is measured in two runs of different sizes under ``valgrind
--tool=callgrind``, and is their difference divided by the difference in units:
interpreter start-up, imports, connection set-up and teardown cancel out. Hash
randomisation is pinned (PYTHONHASHSEED=0), no bytecode is written, the cyclic GC
starts from a frozen heap, and the server's timeouts are far beyond the run, so two
runs of the same code count the same to within a few hundred instructions.

The check fails when a figure grows more than ``TOLERANCE`` over the committed
baseline (``benchmarks/cost-baseline.json``, one entry per Python version, since
the interpreter's own cost is in every figure). A change that costs more on
purpose refreshes it with ``--update`` and says so in its commit message.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "benchmarks" / "cost-baseline.json"
#: A figure may grow this much before the check fails: far above the run-to-run
#: spread (well under 0.1 %), below what a real regression on the hot path costs.
TOLERANCE = 0.10
#: The two sizes each figure is measured at (units: requests, events, deliveries / subscribers).
SIZES = {"request": (100, 600), "sse": (1000, 6000), "fanout": (5, 45)}
FANOUT_SUBSCRIBERS = 100
GET = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n"


class CountingTransport(asyncio.Transport):
    """A transport that takes every write at once and counts what it got."""

    def __init__(self, protocol: Any) -> None:
        super().__init__()
        self.protocol = protocol
        self.size = 0
        self.events = 0  # "data: x" lines seen (the benchmark's event payload)
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: Any) -> None:
        self.size += len(data)
        self.events += bytes(data).count(b"data: x")

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _server() -> tuple[Any, Any]:
    from benchmarks.apps import tinystream_app
    from tinystream.config import Config
    from tinystream.server import ServerContext

    # Timeouts beyond any run (valgrind is ~50x slower): no timer may fire.
    config = Config(
        keep_alive_timeout=1e6,
        header_timeout=1e6,
        write_stall_timeout=1e6,
        access_log=False,
    )
    return ServerContext(tinystream_app.app, config), tinystream_app


def _connect(ctx: Any) -> tuple[Any, CountingTransport]:
    from tinystream.server import HTTPConnection

    connection = HTTPConnection(ctx)
    transport = CountingTransport(connection)
    connection.connection_made(transport)
    return connection, transport


async def _settle(done: Any) -> None:
    # Loop iterations, not an event: the same number of them in every run.
    while not done():  # noqa: ASYNC110
        await asyncio.sleep(0)


async def request_cycles(count: int) -> None:
    ctx, _ = _server()
    connection, _transport = _connect(ctx)
    for _ in range(count):
        connection.data_received(GET)
        await _settle(lambda: connection.exchange is None)
    if ctx.requests_served != count:
        raise SystemExit(f"cost: {ctx.requests_served} requests served, expected {count}")


async def sse_events(count: int) -> None:
    ctx, _ = _server()
    connection, transport = _connect(ctx)
    connection.data_received(b"GET /sse?n=%d HTTP/1.1\r\nHost: bench\r\n\r\n" % count)
    await _settle(lambda: connection.exchange is None)
    if transport.events != count:
        raise SystemExit(f"cost: {transport.events} events sent, expected {count}")


async def fanout_deliveries(count: int) -> None:
    ctx, app = _server()
    subscribers = [_connect(ctx) for _ in range(FANOUT_SUBSCRIBERS)]
    for connection, _ in subscribers:
        connection.data_received(b"GET /fanout HTTP/1.1\r\nHost: bench\r\n\r\n")
    await _settle(lambda: app.hub.subscriber_count == FANOUT_SUBSCRIBERS)
    await _settle(lambda: all(t.size for _, t in subscribers))  # each said "ready"
    for _ in range(count):
        await app.hub.publish("bench", "x" * 64)
    await _settle(lambda: all(t.events >= count for _, t in subscribers))
    if any(t.events != count for _, t in subscribers):
        raise SystemExit("cost: a subscriber did not get exactly the events published")


WORKLOADS = {"request": request_cycles, "sse": sse_events, "fanout": fanout_deliveries}
UNITS = {
    "request": "request cycle",
    "sse": "SSE event",
    "fanout": "fan-out delivery",
}


def run_workload(name: str, count: int) -> None:
    sys.path.insert(0, str(ROOT))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    import benchmarks.apps.tinystream_app  # noqa: F401 - imported before the heap is frozen

    gc.collect()
    gc.freeze()
    loop.run_until_complete(WORKLOADS[name](count))
    sys.stdout.flush()
    os._exit(0)  # no teardown: its cost would only add noise


def profile_workload(name: str, count: int) -> None:
    import cProfile
    import pstats

    sys.path.insert(0, str(ROOT))
    loop = asyncio.new_event_loop()
    profiler = cProfile.Profile()
    profiler.enable()
    loop.run_until_complete(WORKLOADS[name](count))
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(35)


def instructions(name: str, count: int) -> int:
    """Instructions one run of a workload executes, counted by callgrind."""
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--run",
            name,
            str(count),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode or match is None:
        raise SystemExit(f"cost: the {name} workload failed:\n{result.stdout}\n{result.stderr}")
    return int(match.group(1))


def measure() -> dict[str, int]:
    jobs = [(name, size) for name, sizes in SIZES.items() for size in sizes]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: instructions(*job), jobs), strict=True))
    figures = {}
    for name, (small, large) in SIZES.items():
        units = large - small
        if name == "fanout":
            units *= FANOUT_SUBSCRIBERS
        figures[name] = round((counts[name, large] - counts[name, small]) / units)
    return figures


def interpreter() -> str:
    from importlib.metadata import version

    return f"CPython {platform.python_version()}, h11 {version('h11')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="write the baseline")
    parser.add_argument("--run", nargs=2, metavar=("WORKLOAD", "COUNT"))
    parser.add_argument("--profile", nargs=2, metavar=("WORKLOAD", "COUNT"))
    args = parser.parse_args()
    if args.run:
        run_workload(args.run[0], int(args.run[1]))
    if args.profile:
        profile_workload(args.profile[0], int(args.profile[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("cost: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    key = interpreter()
    figures = measure()
    baselines = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    if args.update:
        baselines[key] = figures
        BASELINE.write_text(json.dumps(baselines, indent=1, sort_keys=True) + "\n")
        print(f"cost: baseline for {key} written to {BASELINE.relative_to(ROOT)}")
    baseline = baselines.get(key)
    failed = []
    print(f"cost: instructions under callgrind, {key}")
    for name, value in figures.items():
        if baseline is None or name not in baseline:
            print(f"  {UNITS[name]:18s} {value:>10,}   (no baseline)")
            continue
        change = value / baseline[name] - 1
        print(f"  {UNITS[name]:18s} {value:>10,}   baseline {baseline[name]:>10,}   {change:+.1%}")
        if change > TOLERANCE:
            failed.append(name)
    if baseline is None:
        print(f"cost: no baseline for {key}: nothing compared (record one with --update)")
    if failed:
        print(
            f"cost: {', '.join(failed)} grew more than {TOLERANCE:.0%} over the baseline. If that "
            "is intended, refresh it: python scripts/cost.py --update, and commit "
            "benchmarks/cost-baseline.json saying why.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
