"""Flow control for one connection: when we may write, and whether we read.

Writing. The transport calls ``pause_writing`` when its buffer passes the high-water
mark and ``resume_writing`` when it drains below the low-water mark (asyncio
alternates them strictly). A producer loop checks :attr:`FlowControl.write_paused`
after each write and, when set, awaits :meth:`wait_writable` before pulling the
next item, so a slow client never makes us buffer more than the high-water mark
plus one chunk. ``connection_lost`` releases every waiter, so a writer blocked
here wakes and sees that the client is gone instead of waiting forever.

Reading. Several independent reasons may want the socket paused at once (unread
request body, pipelined requests piling up); the transport is paused while any
reason holds and resumed when the last one clears.
"""

from __future__ import annotations

import asyncio
import enum

__all__ = ["FlowControl", "ReadPause"]


class ReadPause(enum.IntFlag):
    """Why reading is paused."""

    BODY = 1  # the handler has not read enough of the request body
    PIPELINE = 2  # too many bytes of later requests wait behind the current one


class FlowControl:
    __slots__ = ("_closed", "_read_paused", "_transport", "_waiter", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.write_paused = False
        self._closed = False
        # Created only when a writer must wait: most connections never do, and an
        # idle event stream should cost as little memory as possible.
        self._waiter: asyncio.Future[None] | None = None
        self._read_paused = ReadPause(0)

    # Writing

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    async def wait_writable(self) -> None:
        """Return when the transport can take more data, or the connection is lost."""
        if not self.write_paused or self._closed:
            return
        if self._waiter is None or self._waiter.done():  # done: its waiter was cancelled
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def release(self) -> None:
        """The connection is gone: wake every writer so it can notice."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Reading

    def pause_reading(self, reason: ReadPause) -> None:
        if not self._read_paused:
            self._transport.pause_reading()
        self._read_paused |= reason

    def resume_reading(self, reason: ReadPause) -> None:
        if not self._read_paused & reason:
            return
        self._read_paused &= ~reason
        if not self._read_paused:
            self._transport.resume_reading()

    def resume_all_reading(self) -> None:
        if self._read_paused:
            self._read_paused = ReadPause(0)
            self._transport.resume_reading()

    def __repr__(self) -> str:
        flags = []
        if self.write_paused:
            flags.append("write paused")
        if self._read_paused:
            flags.append(f"read paused ({self._read_paused!r})")
        return f"<FlowControl {', '.join(flags) or 'open'}>"
