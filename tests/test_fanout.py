"""500 subscribers, 100 events, connections killed at random: everyone ends with everything.

Drives the demo's chat (POST /chat publishes, GET /chat/events subscribes through
Broadcast) once in this process with the memory backend, and once as
``python -m tinystream examples.demo:app --workers 2`` sharing a real redis-server,
where a client that reconnects usually lands on the other worker.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
from pathlib import Path

import pytest

from examples.demo import make_app
from tinystream.testing import ClientConnection, serve_for_test

from . import processes
from .test_broadcast import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBERS = 500
EVENTS = 100
TIMEOUT = 120.0  # seconds, per phase; the whole test takes 6-15 s here, loaded or not
#: The CLI's startup (imports, fork) and its graceful stop, on a loaded machine.
STARTUP = 60.0  # seconds
#: pytest-timeout for each test: all of its phases, and a margin.
HEAVY = 600  # seconds


class Subscriber:
    """An EventSource-like client: reconnects with Last-Event-ID until it has everything."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[str, str]] = []
        self.connected = asyncio.Event()  # registered: its first response head arrived
        self.connection: ClientConnection | None = None
        self.reconnects = 0

    async def run(self) -> None:
        last: str | None = None
        while len(self.received) < EVENTS:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            connection = await ClientConnection.open("127.0.0.1", self.port, timeout=TIMEOUT)
            self.connection = connection
            try:
                response = await connection.start("GET", "/chat/events", headers=headers)
                self.connected.set()
                async for event in response.aiter_events():
                    assert event.event == "chat", f"unexpected {event!r}"  # never a resync
                    assert event.id is not None
                    self.received.append((event.id, event.data))
                    if len(self.received) == EVENTS:
                        break
                # Like a browser: resume from the last id *seen*, which includes the
                # position marker a subscription starts with (not dispatched).
                if response.decoder is not None and response.decoder.last_event_id:
                    last = response.decoder.last_event_id
            except ConnectionError:
                pass  # killed while connecting: try again
            finally:
                self.connection = None
                await connection.close()
            if len(self.received) < EVENTS:
                self.reconnects += 1

    def kill(self) -> bool:
        if self.connection is None:
            return False
        self.connection.abort()  # a reset, as when a network drops
        return True


async def fan_out(port: int) -> tuple[list[tuple[str, str]], list[Subscriber], int]:
    subscribers = [Subscriber(port) for _ in range(SUBSCRIBERS)]
    tasks = [asyncio.ensure_future(s.run()) for s in subscribers]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subscribers)), TIMEOUT)
        published: list[tuple[str, str]] = []
        kills = 0
        publisher = await ClientConnection.open("127.0.0.1", port, timeout=TIMEOUT)
        random.seed(1234)
        for number in range(EVENTS):
            text = f"message {number}"
            answer = await publisher.request("POST", "/chat", body=text.encode())
            assert answer.status == 200, answer.body
            published.append((answer.json()["id"], text))
            for victim in random.sample(subscribers, 3):  # kill a few at every step
                kills += victim.kill()
            await asyncio.sleep(0)  # let deliveries interleave with the publishing
        await publisher.close()
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
    return published, subscribers, kills


def check(published: list[tuple[str, str]], subscribers: list[Subscriber], kills: int) -> None:
    assert kills > 100  # the reconnect path really was exercised
    assert sum(s.reconnects for s in subscribers) > 100
    for subscriber in subscribers:
        assert subscriber.received == published  # in order, no gap, no duplicate


@pytest.mark.timeout(HEAVY)
async def test_memory_backend_one_process() -> None:
    async with serve_for_test(make_app(broadcast_url="memory://"), access_log=False) as client:
        published, subscribers, kills = await fan_out(client.port)
    check(published, subscribers, kills)


@pytest.mark.timeout(HEAVY)
async def test_redis_backend_two_workers() -> None:
    redis = RedisServer()
    redis.start()
    try:
        async with processes.running(
            sys.executable,
            "-m",
            "tinystream",
            "examples.demo:app",
            "--port",
            "0",
            "--workers",
            "2",
            "--no-access-log",
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DEMO_BROADCAST": redis.url},
        ) as process:
            assert process.stderr is not None
            line = await asyncio.wait_for(process.stderr.readline(), STARTUP)
            match = re.search(rb"listening on http://127\.0\.0\.1:(\d+) \(2 workers\)", line)
            assert match, line
            # Keep its log flowing: a worker blocked on a full stderr pipe would
            # stop serving (and stop exiting) until someone read it.
            log = asyncio.ensure_future(process.stderr.read())
            try:
                published, subscribers, kills = await fan_out(int(match.group(1)))
                check(published, subscribers, kills)
                assert all(re.fullmatch(r"\d+-\d+", i) for i, _ in published)  # Redis ids
                # A graceful stop (if it fails, processes.running kills the group:
                # nothing outlives the test either way).
                process.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(process.wait(), STARTUP)
                assert code == 0, await log
            finally:
                log.cancel()
    finally:
        redis.stop()
