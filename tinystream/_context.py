"""What every connection of one server shares, and what every response ends with.

:class:`ServerContext` holds the handler, the options and the counters; the
status phrases and the once-a-second ``Date`` value are built here once; and
:meth:`ServerContext.record_response` is the single place where a response is
counted and its access-log line written, with its :class:`Outcome`.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

from ._threads import shared_pool
from .config import Config
from .request import Request
from .responses import Response, StreamingResponse

__all__ = ["PHRASES", "Connection", "Handler", "Outcome", "ServerContext"]

access_logger = logging.getLogger("tinystream.access")

AnyResponse = Response | StreamingResponse
Fields = list[tuple[bytes, bytes]]
Handler = Callable[[Request], Awaitable[AnyResponse] | AnyResponse]

# RFC 9110 §5.5 field-value, as h11 checks it: no NUL, no CR/LF, no leading or
# trailing whitespace.
_SERVER_VALUE = re.compile(rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*")

PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


class Outcome(enum.Enum):
    """How a response ended: the last word of its access-log line."""

    COMPLETE = "complete"  # sent whole
    CLIENT_GONE = "client_gone"  # the client left (FIN or reset) before the end
    ERROR = "error"  # the handler or producer failed, or the request was refused
    STALLED = "stalled"  # the client stopped reading: cut off
    SHUTDOWN = "shutdown"  # ended by the server's shutdown


class Connection(Protocol):
    """What the server asks of each open connection when it stops."""

    def begin_shutdown(self) -> None:
        """Stop reusing the connection; end it now if it is idle."""

    def force_close(self) -> None:
        """The grace period is over: end whatever is in flight."""

    def write_backlog(self) -> tuple[bool, int]:
        """Whether writing is paused (backpressure), and how many bytes wait to be sent."""


class _DateHeader:
    """The ``Date`` field value, formatted once per second (RFC 9110 §6.6.1)."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


_date = _DateHeader()


class ServerContext:
    """What every connection of one server shares: the handler, options and counters."""

    def __init__(self, handler: Handler, config: Config) -> None:
        self.handler = handler
        self.is_async = _is_async_callable(handler)
        # New request tasks start from this context, not from the context of
        # whatever task happened to end the previous exchange (see Exchange.start).
        self.base_context = contextvars.copy_context()
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.pool = shared_pool(config.max_threads)
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = asyncio.Event()
        self.open_streams = 0
        self.requests_served = 0
        #: How responses ended, by access-log outcome ("complete", "client_gone" ...).
        self.outcomes: dict[str, int] = {}
        #: Called after each connection closes (graceful shutdown waits with it).
        self.on_connection_closed: Callable[[], None] | None = None
        #: Futures of ``Server.wait_stats`` callers, resolved whenever a statistic
        #: changes. Empty in production, so notifying costs one truth test.
        self.stats_waiters: list[asyncio.Future[None]] = []
        base = b""
        if config.server_header:
            server = config.server_header.encode("latin-1")
            if not _SERVER_VALUE.fullmatch(server):
                raise ValueError(f"server_header is not a valid field value: {server!r}")
            base = b"server: " + server + b"\r\n"
        self._base_lines = base
        self._second = -1
        self._common_lines = b""
        #: The ``Date`` and ``Server`` lines for a response with these fields. A
        #: handler whose class sets ``own_server_fields`` (the ASGI adapter: an app
        #: may send its own ``Server`` and ``Date``, which then win) gets the variant
        #: that looks; chosen once here, so a native handler's responses pay nothing.
        self.common_lines: Callable[[Fields], bytes] = (
            self._common_lines_unless_own
            if getattr(handler, "own_server_fields", False)
            else self._common_lines_for
        )

    def stats_changed(self) -> None:
        """A statistic changed: wake ``Server.wait_stats`` callers (none in production)."""
        if not self.stats_waiters:
            return
        waiters, self.stats_waiters = self.stats_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def record_response(
        self,
        client: tuple[str, int] | None,
        method: str,
        target: str,
        version: str,
        status: int,
        size: int,
        duration: float,
        outcome: Outcome,
    ) -> None:
        """Count how a response ended, and write its access-log line."""
        outcomes = self.outcomes
        name = outcome.value
        outcomes[name] = outcomes.get(name, 0) + 1
        if not self.config.access_log or not access_logger.isEnabledFor(logging.INFO):
            return
        host = client[0] if client else "-"
        # The fields again, structured, for the JSON log format (tinystream/_logging.py).
        fields = {
            "method": method,
            "target": target,
            "status": status,
            "bytes": size,
            "duration": round(duration, 6),
            "outcome": name,
            "client": host,
        }
        access_logger.info(
            '%s "%s %s HTTP/%s" %d %d %.1fms %s',
            host,
            method,
            target,
            version,
            status,
            size,
            duration * 1000,
            name,
            extra=fields,
        )

    def common_field_lines(self) -> bytes:
        """The ``Date`` and ``Server`` field lines every response carries, as bytes.

        Built once a second (``Date`` has a one-second resolution), so a response
        head costs one ``join`` for them.
        """
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._common_lines = b"date: " + _date.get() + b"\r\n" + self._base_lines
        return self._common_lines

    def _common_lines_for(self, headers: Fields) -> bytes:
        return self.common_field_lines()

    def _common_lines_unless_own(self, headers: Fields) -> bytes:
        own_date = own_server = False
        for name, _ in headers:
            name = name.lower()
            if name == b"date":
                own_date = True
            elif name == b"server":
                own_server = True
        if not own_date and not own_server:
            return self.common_field_lines()
        lines = b"" if own_date else b"date: " + _date.get() + b"\r\n"
        return lines if own_server else lines + self._base_lines


def _is_async_callable(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - a class instance's method
    return inspect.iscoroutinefunction(call)
