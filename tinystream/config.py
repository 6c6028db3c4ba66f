"""Server options: every limit and timeout, with its default and where it comes from."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["Config"]


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return value


def _positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if _number(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if _number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class Config:
    """Limits, timeouts and switches of a server. Every field has a production default.

    Raises:
        TypeError / ValueError: on construction, naming the field and the bad value.
    """

    #: Idle time allowed between requests on a keep-alive connection, and before the
    #: first byte of a new connection. 5 s: uvicorn's and Apache's default.
    keep_alive_timeout: float = 5.0  # seconds
    #: Deadline for a whole request head, counted from its first byte; trickled
    #: bytes do not extend it (slowloris). 10 s: generous for any real client.
    header_timeout: float = 10.0  # seconds
    #: A response whose transport stays paused (client not reading) this long is
    #: cut off and its producer closed.
    write_stall_timeout: float = 30.0  # seconds
    #: On shutdown, time given to in-flight responses and streams to finish.
    graceful_timeout: float = 5.0  # seconds
    #: Largest request head (request line + fields). 16 KiB: h11's own default;
    #: IIS uses 16 KiB, Tomcat 8 KiB, Node.js 16 KiB.
    max_head_size: int = 16 * 1024  # bytes
    #: Largest request body; ``None`` for no limit. 16 MiB: larger than any form
    #: post, small enough that ``await request.body()`` cannot exhaust memory.
    max_body_size: int | None = 16 * 1024 * 1024  # bytes
    #: Connections served at once; past this a new connection's request gets 503.
    max_connections: int = 10_000
    #: Write buffer water marks: above ``write_high_water`` buffered bytes the
    #: transport pauses us and the producer is not pulled; below ``write_low_water``
    #: it resumes. asyncio's defaults.
    write_high_water: int = 64 * 1024  # bytes
    write_low_water: int = 16 * 1024  # bytes
    #: Unread request body held before we stop reading from the socket.
    read_high_water: int = 64 * 1024  # bytes
    #: Bytes of pipelined requests held while the current one is answered.
    max_pipeline_buffer: int = 64 * 1024  # bytes
    #: Worker threads for plain ``def`` handlers and sync iterators.
    max_threads: int = 64
    #: One line per response on the ``tinystream.access`` logger.
    access_log: bool = True
    #: Value of the ``Server`` header; empty to leave the header out.
    server_header: str = "tinystream"
    #: How long a streaming response waits for its producer's first item before
    #: sending its head anyway. Waiting lets a producer that fails at once answer
    #: with its real status (its ``HTTPError``'s, or 500) instead of ``200`` and a
    #: truncated body; the bound keeps a slow producer's head (and a browser's
    #: EventSource ``open``) from being held back. 0 sends the head at once;
    #: ``math.inf`` always waits for the first item.
    first_item_wait: float = 0.2  # seconds
    #: Treat a client's FIN during a response as a half-close (RFC 9112 §9.6: it
    #: will send no more but still reads) and keep answering, instead of as the
    #: client leaving. Off by default: browsers, curl and httpx send a FIN when
    #: they leave, and a producer should stop at once then. With it on, a client
    #: that left is noticed at the next write (event streams probe with a ping).
    half_close: bool = False

    def __post_init__(self) -> None:
        for name in ("keep_alive_timeout", "header_timeout", "write_stall_timeout"):
            _positive(name, getattr(self, name))
        for name in ("graceful_timeout", "first_item_wait"):
            _non_negative(name, getattr(self, name))
        for name in (
            "max_head_size",
            "max_connections",
            "write_high_water",
            "read_high_water",
            "max_pipeline_buffer",
            "max_threads",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            _positive(name, value)
        if self.max_body_size is not None:
            if isinstance(self.max_body_size, bool) or not isinstance(self.max_body_size, int):
                raise TypeError(f"max_body_size must be an int or None, got {self.max_body_size!r}")
            if self.max_body_size < 0:
                raise ValueError(f"max_body_size must be >= 0, got {self.max_body_size!r}")
        if not isinstance(self.write_low_water, int) or not (
            0 <= self.write_low_water <= self.write_high_water
        ):
            raise ValueError(
                f"write_low_water must be an int from 0 to write_high_water, "
                f"got {self.write_low_water!r}"
            )

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The keyword arguments ``start_server`` and friends accept."""
        return frozenset(f.name for f in fields(cls))
