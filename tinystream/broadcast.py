"""Fan-out with replay: publish an event once, every subscriber gets it, reconnects lose nothing.

    broadcast = Broadcast("memory://")          # or "redis://127.0.0.1:6379/0"
    event_id = await broadcast.publish("room", "hello", event="message")
    return EventSourceResponse(broadcast.subscribe("room", last_event_id=request.last_event_id))

Theory of operation
-------------------
Every published event gets an id that grows in publish order within its channel
(a counter in memory; the stream entry id ``ms-seq`` in Redis). A subscription is
registered *when subscribe() is called* - synchronously, so nothing published
afterwards can be missed - and holds a bounded queue that publishers fill without
ever waiting. A subscriber that passes ``last_event_id`` first gets the retained
events after that id, then live ones. The seam between the two is made exact by
the ids themselves: a subscription never accepts an event whose id is not greater
than the last one it accepted, so an event that arrives both ways is taken once.

A live subscription knows its *position*: the id of the last event published
before it. In Python that is ``subscription.position``; iterating yields only
published events (and ``resync``). On the wire, an :class:`EventSourceResponse`
sends it before the first event as an id-only event (through the
``__sse_prelude__`` hook): browsers do not dispatch it, but remember it as
``lastEventId``, so a page that loses its connection before its first real event
still reconnects with ``Last-Event-ID`` and misses nothing (a plain EventSource
would come back "live" and lose what was published in between).

An id the history no longer covers (trimmed by retention), or does not know
(another server's, or from before a restart), yields one ``resync`` event instead
of a silent gap, so the application can reload its state. A subscriber more than
``queue_size`` events behind is ended: its browser reconnects with Last-Event-ID
and replays from the history, which is cheaper and safer than buffering forever
or slowing the publisher down.

With Redis, each process runs one reader per channel (``XREAD BLOCK``) that fans
out to that process's subscribers, so a thousand subscribers cost one Redis
connection, not a thousand; ``XRANGE`` serves replays; ``XADD ... MAXLEN`` keeps
the retention. Several worker processes, or machines, then share one history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from .sse import ServerSentEvent, SharedEvent

__all__ = ["Broadcast", "BroadcastUnavailable", "Subscription"]

logger = logging.getLogger("tinystream.broadcast")

#: Events kept per channel for replay, by default.
RETENTION = 1000  # events
#: Events a subscriber may fall behind before its stream is ended.
QUEUE_SIZE = 1000  # events
#: A Redis reader blocks this long per XREAD, then checks whether it should stop.
#: Short, because redis-py 8.x takes seconds to finish a blocking read after it is
#: cancelled (7.4 took milliseconds): a stop flag checked this often is faster and cleaner.
REDIS_BLOCK = 250  # milliseconds

Key = Any  # a comparable form of an event id: int (memory) or (ms, seq) (Redis)


class BroadcastUnavailable(ConnectionError):
    """The broadcast backend cannot be reached (publish failed; subscriptions ended)."""


class Subscription:
    """One subscriber's events: an async iterator of :class:`ServerSentEvent` with ids.

    Yields only published events, and the one ``resync`` event an unknown or
    expired ``last_event_id`` gets. Where the subscription starts is
    :attr:`position` (known once :meth:`wait_started` returns); an
    :class:`~tinystream.EventSourceResponse` built on it sends that position
    before the first event, as an id-only event EventSource does not dispatch
    but resumes from (see :meth:`__sse_prelude__`).

    Ends (``StopAsyncIteration``) when closed, when it falls more than its queue
    size behind, when the broadcast closes, or when the backend goes away.
    ``aclose()`` unsubscribes at once; an :class:`EventSourceResponse` calls it
    when its response ends, for whatever reason.
    """

    def __init__(
        self, channel: str, queue_size: int, unregister: Callable[[Subscription], None]
    ) -> None:
        self.channel = channel
        self._queue: deque[ServerSentEvent] = deque()
        self._queue_size = queue_size
        self._unregister = unregister
        self._last: Key | None = None  # key of the last event accepted
        self._held: list[tuple[Key, ServerSentEvent]] | None = None  # live events during a replay
        self._waiter: asyncio.Future[None] | None = None
        self._start_task: asyncio.Future[None] | None = None  # an async replay, first
        # A replay may be as long as the retention; it must not count against the
        # live bound, or a far-behind subscriber would overflow on every reconnect.
        self._allowance = 0
        #: The id of the last event before this subscription's first one: resuming
        #: with it as ``last_event_id`` loses nothing. None until started (Redis
        #: finds it asynchronously), or if the backend went away first.
        self.position: str | None = None
        self._live = False  # started without last_event_id: the client knows no position
        self.ended = False
        #: Why it ended: "closed", "overflow", "unavailable", or None while open.
        self.end_reason: str | None = None

    # Fed by the backend (synchronously, never waiting)

    def deliver(self, key: Key, event: ServerSentEvent) -> None:
        """Backend side: queue a live event (never waits; past ``queue_size``, end)."""
        if self.ended:
            return
        if self._held is not None:
            self._held.append((key, event))
            if len(self._held) > self._queue_size:
                self.end("overflow")
            return
        if self._last is not None and key <= self._last:
            return  # already taken (the replay/live seam)
        if len(self._queue) >= self._queue_size + self._allowance:
            self.end("overflow")
            return
        self._last = key
        self._queue.append(event)
        self._wake()

    def start_after(self, key: Key, event_id: str) -> None:
        """Backend side: accept only events after ``key`` (the client's last id) from now on."""
        self._last = key
        self.position = event_id

    def mark(self, key: Key, event_id: str) -> None:
        """Backend side: start live at ``key``; the wire prelude tells the client its position."""
        self._last = key
        self.position = event_id
        self._live = True

    def hold_live(self) -> None:
        """Backend side: keep live events aside until :meth:`release_live` (an async replay)."""
        self._held = []

    def replay(self, events: list[tuple[Key, ServerSentEvent]]) -> None:
        """Backend side: queue retained events after the start position, in order."""
        for key, event in events:
            if self._last is None or key > self._last:
                self._last = key
                self._queue.append(event)
        self._allowance = len(self._queue)
        self._wake()

    def resync(self, name: str, key: Key, event_id: str) -> None:
        """Backend side: the id asked for is unknown or expired: say so, then go on live.

        The resync event carries the position it resumes from as its id.
        """
        self._queue.append(ServerSentEvent(data="", event=name, id=event_id))
        self._last = key
        self.position = event_id
        self._wake()

    def release_live(self) -> None:
        """Backend side: the replay is queued; deliver the live events held meanwhile."""
        held, self._held = self._held or [], None
        for key, event in held:
            self.deliver(key, event)

    def end(self, reason: str) -> None:
        """End the subscription (``"closed"``, ``"overflow"``, ``"unavailable"``).

        Queued events are still yielded, except after an overflow; then iteration
        stops. Safe to call more than once: the first reason is kept.
        """
        if not self.ended:
            self.ended = True
            self.end_reason = reason
            self._unregister(self)
            if self._start_task is not None and not self._start_task.done():
                self._start_task.cancel()  # a replay nobody will read
            if reason == "overflow":
                self._queue.clear()  # the reconnect replays them from the history
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Consumer interface

    def __aiter__(self) -> Subscription:
        return self

    def begin(self, replay: Coroutine[Any, Any, None]) -> None:
        """Backend side: run ``replay`` in the background; events wait until it is done."""
        self._start_task = asyncio.ensure_future(replay)

    async def wait_started(self) -> None:
        """Wait until the subscription knows where it starts (:attr:`position` is set).

        At once with ``memory://``; with Redis, once the stream's end (or the
        replay) has been read. Returns too if the subscription ends first.
        """
        task = self._start_task
        if task is not None:
            try:
                # shield: a timeout around the caller must not cut the replay short.
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # our caller was cancelled, not the replay
                # The replay was cancelled because the subscription ended.
            self._start_task = None

    async def __sse_prelude__(self) -> ServerSentEvent | None:
        """What an EventSourceResponse sends before the first event: the position.

        For a live subscription (no ``last_event_id``), an id-only event: browsers
        store it as ``lastEventId`` without dispatching it, so one that loses its
        connection before its first real event resumes without loss. None when
        the client already knows its position (it sent ``last_event_id``; a
        ``resync`` event carries its own id) or the subscription ended unstarted.
        """
        await self.wait_started()
        if self._live and self.position is not None:
            return ServerSentEvent(id=self.position)
        return None

    async def __anext__(self) -> ServerSentEvent:
        if self._start_task is not None:
            await self.wait_started()
        while True:
            if self._queue:
                return self._queue.popleft()
            if self.ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def get_nowait(self) -> ServerSentEvent | None:
        """The next queued event, or None if none is ready (ended or not)."""
        return self._queue.popleft() if self._queue else None

    async def aclose(self) -> None:
        """Unsubscribe now (safe to call more than once)."""
        self.end("closed")


class _MemoryChannel:
    __slots__ = ("events", "next_id", "subscribers")

    def __init__(self, retention: int) -> None:
        self.events: deque[tuple[int, float, ServerSentEvent]] = deque(maxlen=retention)
        self.next_id = 1
        self.subscribers: set[Subscription] = set()


class _MemoryBackend:
    """One process's history and subscribers; exact, standard library only."""

    def __init__(self, broadcast: Broadcast) -> None:
        self._b = broadcast
        self._channels: dict[str, _MemoryChannel] = {}

    def _channel(self, name: str) -> _MemoryChannel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _MemoryChannel(self._b.retention)
        return channel

    def _expire(self, channel: _MemoryChannel) -> None:
        max_age = self._b.max_age
        if max_age is not None:
            horizon = time.monotonic() - max_age
            while channel.events and channel.events[0][1] < horizon:
                channel.events.popleft()

    async def publish(self, name: str, data: str, event: str | None) -> str:
        channel = self._channel(name)
        number = channel.next_id
        channel.next_id += 1
        message = SharedEvent(data=data, event=event, id=str(number))
        channel.events.append((number, time.monotonic(), message))
        self._expire(channel)
        for subscription in list(channel.subscribers):
            subscription.deliver(number, message)
        return message.id or ""

    def subscribe(
        self, subscription: Subscription, last_event_id: str | None, history: int
    ) -> None:
        channel = self._channel(subscription.channel)
        self._expire(channel)
        newest = channel.next_id - 1
        channel.subscribers.add(subscription)
        if last_event_id is None:
            recent = list(channel.events)[-history:] if history else []
            if not recent:
                subscription.mark(newest, str(newest))
                return
            # The history's events carry their ids: no position needs sending.
            subscription.start_after(None, str(newest))
            subscription.replay([(number, message) for number, _, message in recent])
            return
        try:
            after = int(last_event_id)
        except ValueError:
            after = -1
        oldest = channel.events[0][0] if channel.events else channel.next_id
        if after < 0 or after > newest or after < oldest - 1:
            subscription.resync(self._b.resync_event, newest, str(newest))  # unknown or expired
            return
        subscription.start_after(after, str(after))
        subscription.replay(
            [(number, message) for number, _, message in channel.events if number > after]
        )

    def unsubscribe(self, subscription: Subscription) -> None:
        channel = self._channels.get(subscription.channel)
        if channel is not None:
            channel.subscribers.discard(subscription)

    async def close(self) -> None:
        self._channels.clear()


def _redis_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class _RedisChannel:
    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.reader: asyncio.Task[None] | None = None
        #: The id of the last entry the reader fanned out (None until it started):
        #: a subscription registered now receives exactly the entries after it.
        self.position: str | None = None


class _RedisBackend:
    """Redis Streams: one history shared by every process that uses the same Redis."""

    def __init__(self, broadcast: Broadcast, url: str) -> None:
        try:
            import redis.asyncio
        except ImportError:
            raise ImportError(
                "the redis:// backend needs redis-py: pip install 'tinystream[redis]'"
            ) from None
        self._b = broadcast
        self._url = url
        self._redis_module = redis
        self._client: Any = None
        self._channels: dict[str, _RedisChannel] = {}
        self._discards: set[asyncio.Task[None]] = set()
        self._closed = False

    def _connection(self) -> Any:
        if self._client is None:
            self._client = self._redis_module.asyncio.from_url(self._url, decode_responses=True)
        return self._client

    def _key(self, channel: str) -> str:
        return self._b.prefix + channel

    def _unavailable(self, exc: BaseException) -> BroadcastUnavailable:
        # Redis went away: its pooled connections are dead even once it returns.
        # Drop the client so the next use connects afresh (retrying the command
        # instead could add an XADD twice).
        stale, self._client = self._client, None
        if stale is not None:
            task = asyncio.get_running_loop().create_task(self._discard(stale))
            self._discards.add(task)
            task.add_done_callback(self._discards.discard)
        return BroadcastUnavailable(f"broadcast backend {self._url} unavailable: {exc}")

    async def _discard(self, client: Any) -> None:
        with contextlib.suppress(*self._errors):
            await client.aclose()

    @property
    def _errors(self) -> tuple[type[BaseException], ...]:
        module = self._redis_module
        return (module.ConnectionError, module.TimeoutError, OSError)

    async def publish(self, name: str, data: str, event: str | None) -> str:
        channel = self._channels.get(name)
        if channel is not None and not channel.ready.done():
            # A subscriber here is still finding where the stream ends; publishing
            # first could put this event before that point and lose it for them.
            with contextlib.suppress(BroadcastUnavailable):
                await asyncio.shield(channel.ready)
        fields = {"data": data, "event": event or ""}
        client = self._connection()
        try:
            entry_id: str = await client.xadd(
                self._key(name), fields, maxlen=self._b.retention, approximate=False
            )
            if self._b.max_age is not None:
                horizon = _redis_key(entry_id)[0] - int(self._b.max_age * 1000)
                await client.xtrim(self._key(name), minid=f"{max(horizon, 0)}-0")
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        return entry_id

    def subscribe(
        self, subscription: Subscription, last_event_id: str | None, history: int
    ) -> None:
        name = subscription.channel
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _RedisChannel()
            channel.reader = asyncio.get_running_loop().create_task(self._read(name, channel))
        channel.subscribers.add(subscription)
        registered_at = channel.position
        # Until the replay is done, live events wait aside; ids sort out the seam.
        subscription.hold_live()

        async def start() -> None:
            try:
                await self._start(subscription, channel, last_event_id, registered_at, history)
            except BroadcastUnavailable:
                subscription.end("unavailable")
            finally:
                subscription.release_live()

        subscription.begin(start())

    async def _start(
        self,
        subscription: Subscription,
        channel: _RedisChannel,
        last: str | None,
        registered_at: str | None,
        history: int = 0,
    ) -> None:
        started_at = await asyncio.shield(channel.ready)  # where the reader started
        # Entries fanned out after the registration are exactly those after this id.
        position = registered_at or started_at
        if last is None and history:
            try:
                recent = await self._connection().xrevrange(
                    self._key(subscription.channel), max=position, min="-", count=history
                )
            except self._errors as exc:
                raise self._unavailable(exc) from exc
            if recent:
                # The history's events carry their ids: no position needs sending.
                subscription.start_after(None, recent[0][0])
                subscription.replay(
                    [(_redis_key(i), self._event(i, f)) for i, f in reversed(recent)]
                )
                return
        if last is None:
            subscription.mark(_redis_key(position), position)
            return
        client = self._connection()
        key = self._key(subscription.channel)
        try:
            info = await client.xinfo_stream(key)
        except self._redis_module.ResponseError:
            info = None  # no such stream: nothing was ever published here
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        try:
            wanted = _redis_key(last)
        except ValueError:
            wanted = None
        if wanted is None or self._beyond_history(info, wanted):
            # Live from the registration on: exactly the events held since
            # subscribe() was called - the stream's end *now* could be later.
            subscription.resync(self._b.resync_event, _redis_key(position), position)
            return
        try:
            entries = await client.xrange(key, min=f"({last}", max="+", count=self._b.retention)
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        subscription.start_after(wanted, last)
        subscription.replay([(_redis_key(i), self._event(i, f)) for i, f in entries])

    def _beyond_history(self, info: dict[str, Any] | None, wanted: tuple[int, int]) -> bool:
        """Is ``wanted`` unknown to this stream, or might entries after it be gone?"""
        newest = _redis_key(info["last-generated-id"]) if info else (0, 0)
        if wanted > newest:
            return True  # another stream's id, or one from before Redis lost its data
        if wanted == newest or info is None:
            return False  # nothing after it to miss
        added, length = info.get("entries-added"), info.get("length", 0)
        if added is not None and added == length:
            return False  # nothing was ever trimmed (Redis 7 counts entries added)
        if added is None and length < self._b.retention and self._b.max_age is None:
            return False  # older Redis: MAXLEN cannot have trimmed a shorter stream
        # Something was trimmed. The entries after `wanted` are all still here only
        # if `wanted` is at least the first one; the ids of trimmed entries are not
        # kept (Redis 7: max-deleted-entry-id can stay 0-0 after MAXLEN trimming),
        # so an id older than the first entry cannot be vouched for.
        first_entry = info.get("first-entry")
        return first_entry is None or wanted < _redis_key(first_entry[0])

    @staticmethod
    def _event(entry_id: str, fields: dict[str, str]) -> ServerSentEvent:
        return SharedEvent(
            data=fields.get("data", ""), event=fields.get("event") or None, id=entry_id
        )

    async def _read(self, name: str, channel: _RedisChannel) -> None:
        # One reader per channel per process, fanning out to local subscribers.
        client = self._connection()
        key = self._key(name)
        try:
            latest = await client.xrevrange(key, count=1)
            position = latest[0][0] if latest else "0-0"
            channel.position = position
            channel.ready.set_result(position)
            while channel.subscribers and not self._closed:
                answer = await client.xread({key: position}, block=REDIS_BLOCK, count=500)
                for _stream, entries in answer or ():
                    for entry_id, fields in entries:
                        position = channel.position = entry_id
                        message = self._event(entry_id, fields)
                        entry_key = _redis_key(entry_id)
                        for subscription in list(channel.subscribers):
                            subscription.deliver(entry_key, message)
        except self._errors as exc:
            if self._closed:
                return  # close() closed the connection under us: the expected way out
            logger.warning("broadcast reader for %r lost Redis: %s", name, exc)
            unavailable = self._unavailable(exc)
            if not channel.ready.done():
                channel.ready.set_exception(unavailable)
                channel.ready.exception()  # retrieved: subscribers see it through _start
            for subscription in list(channel.subscribers):
                subscription.end("unavailable")
        finally:
            if self._channels.get(name) is channel:
                del self._channels[name]

    def unsubscribe(self, subscription: Subscription) -> None:
        channel = self._channels.get(subscription.channel)
        if channel is not None:
            channel.subscribers.discard(subscription)
            # The reader notices an empty channel within REDIS_BLOCK and stops.

    async def close(self) -> None:
        self._closed = True
        readers = [c.reader for c in self._channels.values() if c.reader is not None]
        # Closing the client ends a reader's blocked XREAD at once (cancelling it
        # would take redis-py 8.x seconds, see REDIS_BLOCK).
        if self._client is not None:
            await self._discard(self._client)
            self._client = None
        if readers:
            await asyncio.wait(readers, timeout=2 * REDIS_BLOCK / 1000 + 1)
        if self._discards:
            await asyncio.wait(list(self._discards), timeout=1)


class Broadcast:
    """Publish events once; deliver them to every subscriber, with replay on reconnect.

    Args:
        url: ``"memory://"`` (this process only, standard library) or
            ``"redis://host:port/db"`` (Redis Streams; ``pip install 'tinystream[redis]'``).
            Connects lazily, on first use.
        retention: events kept per channel for replay.
        max_age: also drop events older than this many seconds (None: by count only).
        queue_size: events a subscriber may fall behind before its stream is ended.
        resync_event: name of the event sent to a subscriber whose ``last_event_id``
            is unknown or older than the history.
        prefix: Redis key prefix of the channels' streams.

    Raises:
        ValueError: an unsupported URL scheme or a bad option value.
        ImportError: ``redis://`` without redis-py installed.
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        retention: int = RETENTION,
        max_age: float | None = None,
        queue_size: int = QUEUE_SIZE,
        resync_event: str = "resync",
        prefix: str = "tinystream:broadcast:",
    ) -> None:
        for option, value in (("retention", retention), ("queue_size", queue_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be an int >= 1, got {value!r}")
        if max_age is not None and not max_age > 0:
            raise ValueError(f"max_age must be > 0 seconds or None, got {max_age!r}")
        ServerSentEvent(event=resync_event)  # validates the name
        self.url = url
        self.retention = retention
        self.max_age = max_age
        self.queue_size = queue_size
        self.resync_event = resync_event
        self.prefix = prefix
        scheme = urlsplit(url).scheme
        self._backend: _MemoryBackend | _RedisBackend
        if scheme == "memory":
            self._backend = _MemoryBackend(self)
        elif scheme in ("redis", "rediss", "unix"):
            self._backend = _RedisBackend(self, url)
        else:
            raise ValueError(f"unsupported broadcast URL {url!r}: use memory:// or redis://")
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    async def publish(self, channel: str, data: str, event: str | None = None) -> str:
        """Send ``data`` (as an event named ``event``) to every subscriber of ``channel``.

        Never waits for subscribers. Returns the event's id.

        Raises:
            BroadcastUnavailable: the backend cannot be reached.
            ValueError / TypeError: bad data or event name (as for ServerSentEvent).
            RuntimeError: the broadcast is closed.
        """
        if self._closed:
            raise RuntimeError("this Broadcast is closed")
        ServerSentEvent(data=data, event=event)  # refuse what could not be sent, early
        return await self._backend.publish(channel, data, event)

    def subscribe(
        self, channel: str, last_event_id: str | None = None, *, history: int = 0
    ) -> Subscription:
        """Events of ``channel`` from now on; after ``last_event_id`` first, if given.

        Registered at once: nothing published after this call is missed. Must be
        called with an event loop running (inside a handler).

        Args:
            channel: the channel's name.
            last_event_id: the client's ``Last-Event-ID`` (``request.last_event_id``);
                None for live events only.
            history: with ``last_event_id=None`` (a new page), replay up to this
                many of the latest retained events first (a chat's last messages).

        Returns:
            A :class:`Subscription`: pass it to :class:`~tinystream.EventSourceResponse`,
            or iterate it.

        Raises:
            RuntimeError: the broadcast is closed, or no event loop is running.
        """
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError(f"history must be an int >= 0, got {history!r}")
        if self._closed:
            raise RuntimeError("this Broadcast is closed")
        subscription = Subscription(channel, self.queue_size, self._unsubscribe)
        self._subscriptions.add(subscription)
        self._backend.subscribe(subscription, last_event_id, history)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        self._backend.unsubscribe(subscription)

    @property
    def subscriber_count(self) -> int:
        """Open subscriptions in this process."""
        return len(self._subscriptions)

    async def close(self) -> None:
        """End every open subscription and release the backend."""
        if self._closed:
            return
        self._closed = True
        replays = [s._start_task for s in self._subscriptions if s._start_task is not None]
        for subscription in list(self._subscriptions):
            subscription.end("closed")
        if replays:
            await asyncio.gather(*replays, return_exceptions=True)
        await self._backend.close()

    async def __aenter__(self) -> Broadcast:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
