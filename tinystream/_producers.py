"""What a streaming response's content becomes before it is written: one async iterator.

A handler's content may be an async iterable, a list, or any sync iterable; the
writer wants one ``AsyncIterator``. A sync iterator runs in a worker thread (a
blocking ``next()`` must stall nobody), pulled in batches no larger than what the
transport can take before it pauses us. :func:`pull_first` takes the first item
under a time bound, which is how a stream that fails at once gets a real status.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

from ._threads import SyncIteratorPump, ThreadPool

__all__ = ["NOTHING", "close_source", "open_source", "pull_first", "to_bytes"]

logger = logging.getLogger("tinystream.error")

#: "No item": the first item of a stream has not been pulled, or there was none.
NOTHING: Any = object()


def open_source(
    content: Iterable[Any] | AsyncIterable[Any],
    pool: ThreadPool,
    room: Callable[[], int],
) -> AsyncIterator[Any]:
    """One async iterator over ``content``.

    ``room()`` is how many bytes the transport takes before it pauses us: a sync
    iterator's worker thread pulls no more than that at a time.
    """
    if isinstance(content, AsyncIterable):
        return content.__aiter__()
    if isinstance(content, (list, tuple)):
        return _iterate_in_memory(content)
    return _ThreadSource(iter(content), pool, room)


async def _iterate_in_memory(items: list[Any] | tuple[Any, ...]) -> AsyncIterator[Any]:
    # A list cannot block, so no worker thread: iterate it right here.
    for item in items:
        yield item


class _ThreadSource:
    """A sync iterator pulled in worker threads, as an async iterator.

    A class rather than an async generator so that :meth:`aclose` closes the
    user's iterator even when it was never pulled (a HEAD request, a response
    that failed before its body): an unstarted generator's ``finally`` never runs.
    """

    __slots__ = ("_items", "_pump", "_room")

    def __init__(self, iterator: Any, pool: ThreadPool, room: Callable[[], int]) -> None:
        self._pump: SyncIteratorPump[Any] = SyncIteratorPump(iterator, pool)
        self._room = room
        self._items: deque[Any] = deque()

    def __aiter__(self) -> _ThreadSource:
        return self

    async def __anext__(self) -> Any:
        if not self._items:
            batch = await self._pump.pull(max(self._room(), 1))
            if not batch:
                raise StopAsyncIteration
            self._items.extend(batch)
        return self._items.popleft()

    async def aclose(self) -> None:
        self._pump.close()


async def pull_first(
    source: AsyncIterator[Any], wait: float
) -> tuple[Any, asyncio.Future[Any] | None]:
    """The first item of ``source`` if it comes within ``wait`` seconds.

    A status line is a promise: once ``200`` is out, a producer that fails can
    only truncate the body. Waiting for the first item lets a stream that fails at
    once (a bad id, a refused query) answer with its real status; the bound keeps
    a slow producer's head - and a proxy's read timeout, and the browser's
    EventSource ``open`` - from being held back. ``wait=0`` pulls nothing.

    Returns ``(item, None)``; ``(NOTHING, None)`` for an empty source; and
    ``(NOTHING, pull)`` when the bound ran out first, ``pull`` being the pull
    still under way (await it for the item).

    Raises:
        Exception: whatever the producer raised before its first item.
    """
    if not wait:
        return NOTHING, None
    pull: asyncio.Future[Any] = asyncio.ensure_future(source.__anext__())
    try:
        await asyncio.wait((pull,), timeout=wait)
    except asyncio.CancelledError:
        # We are being cancelled (the client left): stop the pull before the
        # producer is closed - an async generator cannot be closed while it runs.
        pull.cancel()
        await asyncio.wait((pull,))
        raise
    if not pull.done():
        return NOTHING, pull
    try:
        return pull.result(), None
    except StopAsyncIteration:
        return NOTHING, None


async def close_source(
    source: AsyncIterator[Any], pending: asyncio.Future[Any] | None = None
) -> None:
    """Close a producer (its ``finally`` runs); a failure to close is logged.

    ``pending`` is a pull of its first item still under way (see :func:`pull_first`):
    it is stopped first, since an async generator cannot be closed while it runs.
    """
    if pending is not None and not pending.done():
        pending.cancel()
        await asyncio.wait((pending,))
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.exception("closing a streaming producer raised")


def to_bytes(item: object) -> bytes:
    """A producer's item as bytes.

    Raises:
        TypeError: the item is neither bytes-like nor str.
    """
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        # A copy: the producer may reuse a mutable buffer after yielding it.
        return bytes(item)
    raise TypeError(f"a streaming producer yielded {type(item).__name__}, expected bytes or str")
