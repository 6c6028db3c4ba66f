"""The timing of one open event stream: its prelude, pings, and last event.

An :class:`~tinystream.streams.EventSourceResponse` says *what* to send (a
``retry`` prelude, a ping interval, the events that end it on shutdown or
failure); :class:`LiveEventStream` decides *when*, and writes through the
connection's :class:`~tinystream._writer.ResponseWriter` like every other byte.
"""

from __future__ import annotations

import asyncio

from ._writer import ResponseWriter
from .sse import PING, ServerSentEvent
from .streams import EventSourceResponse

__all__ = ["LiveEventStream"]


class LiveEventStream:
    """Pings while idle, and the event that ends the stream (WHATWG HTML §9.2)."""

    __slots__ = ("_loop", "_ping_timer", "_writer", "response")

    def __init__(
        self, writer: ResponseWriter, response: EventSourceResponse, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._writer = writer
        self._loop = loop
        self.response = response
        self._ping_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Right after the head: the ``retry`` prelude, then the ping clock starts."""
        if self.response.prelude:
            self._writer.write(self.response.prelude)
        ping = self.response.ping
        if ping is not None:
            self._writer.track_time = True
            self._writer.last_write = now = self._loop.time()
            self._ping_timer = self._loop.call_at(now + ping, self._on_ping_timer)

    def _on_ping_timer(self) -> None:
        # Ping only after `ping` seconds without any write: every event resets the
        # clock, so a busy stream never carries pings. (A comment line, which an
        # EventSource ignores, but which keeps proxies' idle timers from firing.)
        ping = self.response.ping
        assert ping is not None
        writer = self._writer
        if self._loop.time() - writer.last_write >= ping * 0.999:  # timers fire a hair early
            if not writer.is_open():
                self._ping_timer = None
                return
            writer.write(PING)
        self._ping_timer = self._loop.call_at(writer.last_write + ping, self._on_ping_timer)

    def probe(self) -> None:
        """The client sent EOF: a ping now tells a half-close from a client that left."""
        if self._writer.is_open():
            self._writer.write(PING)

    def stop(self) -> None:
        """No more pings (the stream ended, or its client left)."""
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def end_with(self, event: ServerSentEvent) -> bool:
        """Send ``event`` and end the body cleanly; False if the body is not open."""
        self.stop()
        if not self._writer.is_open():
            return False
        self._writer.write(event.encode())
        self._writer.end()
        return True
