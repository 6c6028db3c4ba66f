"""Worker threads for blocking user code: plain ``def`` handlers and sync iterators.

Why not ``asyncio.to_thread``? Its executor's threads are joined at interpreter
exit, so one ``next()`` blocked forever on a dead upstream would make a server hang
on Ctrl-C. Our threads are daemon threads: the process can always exit.

:class:`SyncIteratorPump` runs a sync iterator in a worker thread and hands every
item to the event loop *as soon as it exists* (a blocking ``next()`` never holds
back an item already produced), while a fast iterator is drained in batches: the
loop is woken once per batch, not once per item. The thread pulls only as far
ahead as the consumer's byte budget allows, so backpressure still bounds memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["SyncIteratorPump", "ThreadPool", "shared_pool"]

logger = logging.getLogger("tinystream.error")

T = TypeVar("T")
_Job = tuple["concurrent.futures.Future[Any]", Callable[..., Any], tuple[Any, ...]]

#: An idle worker thread exits after this long, so a burst leaves no threads behind.
IDLE_THREAD_EXIT = 30.0  # seconds
#: Items a pump's thread may pull in one job when their size is unknown.
MAX_ITEMS_PER_JOB = 1024


class ThreadPool:
    """A minimal pool of daemon threads, started on demand up to ``max_threads``."""

    def __init__(self, max_threads: int, name: str = "tinystream-worker") -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads!r}")
        self.max_threads = max_threads
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0  # jobs submitted and not yet taken by a thread

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` in a worker thread."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self._queued += 1
            # Start a thread unless an idle one is free for every queued job: a job
            # must never wait behind a thread that is blocked in user code.
            if self._queued > self._idle and self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{self._threads}", daemon=True
                ).start()
        self._jobs.put((future, fn, args))
        return future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Await ``fn(*args)`` run in a worker thread.

        Cancelling the awaiting task stops the wait at once; a call already running
        in its thread cannot be interrupted and runs to its end unobserved.
        """
        return await asyncio.wrap_future(self.submit(fn, *args))

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_THREAD_EXIT)
            except queue.Empty:
                job = None
            with self._lock:
                self._idle -= 1
                if job is None:
                    if self._queued > self._idle:
                        # A job was submitted as we timed out, with no idle thread
                        # free for it: stay and take it.
                        continue
                    self._threads -= 1
                    return
                self._queued -= 1
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del job, future, fn, args


_shared: ThreadPool | None = None
_shared_lock = threading.Lock()


def shared_pool(max_threads: int = 64) -> ThreadPool:
    """The process-wide pool; asking for more threads than it has raises its limit.

    One pool per process, not per server: a Router's sync routes and the server
    that calls it then share one bound on blocked threads.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ThreadPool(max_threads)
        elif max_threads > _shared.max_threads:
            _shared.max_threads = max_threads
        return _shared


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _size_of(item: object) -> int:
    if isinstance(item, (bytes, bytearray, str, memoryview)):
        return len(item)
    return 0


class SyncIteratorPump(Generic[T]):
    """Pulls a sync iterator in worker threads on the consumer's demand.

    The consumer calls :meth:`pull` with a byte budget; it gets every item the
    thread has produced so far (at least one) or ``[]`` at the end. :meth:`close`
    abandons the iterator: it is closed (its ``finally`` runs) at once if no
    ``next()`` is running, or as soon as the running one returns.
    """

    def __init__(self, iterator: Iterator[T], pool: ThreadPool) -> None:
        self._iterator = iterator
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._ready: list[T] = []
        self._finished = False
        self._error: BaseException | None = None
        self._running = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    async def pull(self, budget: int) -> list[T]:
        """Items produced since the last call; ``[]`` once the iterator is exhausted.

        Raises:
            Exception: whatever the iterator raised, after the items before it.
        """
        while True:
            with self._lock:
                if self._ready:
                    items, self._ready = self._ready, []
                    return items
                if self._finished:
                    error, self._error = self._error, None
                    if error is not None:
                        raise error
                    return []
                if not self._running:
                    self._running = True
                    self._pool.submit(self._run, budget)
                waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                with self._lock:
                    self._waiter = None

    def close(self) -> None:
        """Abandon the iterator and close it as soon as no ``next()`` is running."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._running
        if not running:
            # close() runs the generator's finally, which is user code that may block.
            self._pool.submit(self._close_iterator)

    def _wake(self) -> None:
        # Called with the lock held. One wake-up per wait: items produced while the
        # loop is on its way simply join the batch it will take.
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._loop.call_soon_threadsafe(_resolve, waiter)

    def _run(self, budget: int) -> None:
        # Runs in a worker thread: pull until the budget is spent or the end.
        pulled = items = 0
        try:
            while pulled < budget and items < MAX_ITEMS_PER_JOB and not self._closed:
                try:
                    item = next(self._iterator)
                except StopIteration:
                    with self._lock:
                        self._finished = True
                    return
                except BaseException as exc:
                    with self._lock:
                        self._finished = True
                        self._error = exc
                    return
                pulled += _size_of(item) or 1
                items += 1
                with self._lock:
                    self._ready.append(item)
                    self._wake()
        finally:
            with self._lock:
                self._running = False
                closed = self._closed
                self._wake()
            if closed:
                self._close_iterator()

    def _close_iterator(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            logger.exception("closing a sync iterator raised")
