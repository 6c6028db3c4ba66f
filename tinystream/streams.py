"""Streaming formats built on StreamingResponse: Server-Sent Events and NDJSON.

Both turn a producer of *objects* into a producer of *bytes* through a thin wrapper
that keeps the server's guarantees: a sync producer still runs in a worker thread
(the wrapper is a sync generator too), and closing the wrapper closes the producer.

What an :class:`EventSourceResponse` adds on the server side - pings while idle,
a last event at shutdown or after a failure, probing a client that sent EOF -
lives in :mod:`tinystream._eventstream`, which writes through the connection's
response writer like every other byte.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any

from .responses import HeadersArg, StreamingResponse
from .sse import ServerSentEvent, encode_data

__all__ = ["EventSourceResponse", "NDJSONResponse", "negotiate_stream"]

SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"
NDJSON_MEDIA_TYPE = "application/x-ndjson"

EventLike = ServerSentEvent | str | Mapping[str, Any]
# Shared by every event stream: an idle stream should cost as little as possible.
_NO_CACHE = (b"cache-control", b"no-cache")
_NO_PROXY_BUFFERING = (b"x-accel-buffering", b"no")


def encode_event(item: object) -> bytes:
    """Wire bytes of one item of an event producer.

    Raises:
        TypeError: the item is not a ServerSentEvent, str or mapping.
    """
    if type(item) is str:
        return encode_data(item)
    if isinstance(item, ServerSentEvent):
        return item.encode()
    if isinstance(item, Mapping):
        return ServerSentEvent.from_dict(item).encode()
    raise TypeError(
        f"an event producer yielded {type(item).__name__}; expected ServerSentEvent, str or dict"
    )


def _dumps(item: object) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _map_sync(items: Iterable[Any], convert: Callable[[Any], Any]) -> Iterator[Any]:
    # A sync generator, so the server runs it (and the user's next()) in a worker
    # thread; its finally closes the user's iterator when the server closes it.
    iterator = iter(items)
    try:
        for item in iterator:
            yield convert(item)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


async def _map_async(
    items: AsyncIterable[Any],
    convert: Callable[[Any], Any],
    prelude: Callable[[], Awaitable[Any]] | None = None,
) -> AsyncIterator[Any]:
    iterator = items.__aiter__()
    try:
        # Inside the try: a client that leaves while the prelude is awaited
        # still closes the producer.
        first = None if prelude is None else await prelude()
        if first is not None:
            yield convert(first)
        async for item in iterator:
            yield convert(item)
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _map(
    items: Iterable[Any] | AsyncIterable[Any],
    convert: Callable[[Any], Any],
    prelude: Callable[[], Awaitable[Any]] | None = None,
) -> Iterable[Any] | AsyncIterable[Any]:
    """``convert`` applied to every item, sync staying sync; closing it closes ``items``.

    With ``prelude`` (async producers only), the item it returns, unless None,
    goes first.
    """
    if isinstance(items, AsyncIterable):
        return _map_async(items, convert, prelude)
    if isinstance(items, Iterable) and not isinstance(items, (str, bytes, bytearray, Mapping)):
        return _map_sync(items, convert)
    raise TypeError(f"expected a sync or async iterable of items, got {type(items).__name__}")


def _event_name(option: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{option} must be a non-empty str, got {value!r}")
    ServerSentEvent(event=value)  # the same single-line rule as any event name
    return value


@functools.lru_cache(maxsize=64)
def _final_event(name: str, data: str, retry: int | None) -> ServerSentEvent:
    # Shared between responses (never mutated): most streams use the defaults.
    return ServerSentEvent(data=data, event=name, retry=retry)


class EventSourceResponse(StreamingResponse):
    """A Server-Sent Events stream (``text/event-stream``).

    Args:
        events: a sync or async iterable of :class:`ServerSentEvent`, ``str``
            (sent as ``data``) or ``dict`` (keys of ServerSentEvent).
        ping: seconds of silence after which a comment line is sent (every event
            resets the timer); ``None`` for no pings.
        retry: if given, a ``retry:`` field (milliseconds) sent first.
        headers: extra response fields.
        error_event: when the producer raises after the stream started, the
            traceback is logged and one last event of this name (with empty data,
            no internal detail) ends the stream cleanly. Not ``error``: browsers
            fire their own ``error``. A producer that raises before its first
            event gets a real status instead (its ``HTTPError``'s, or 500).
        shutdown_event, shutdown_data, shutdown_retry: when the server shuts
            down, the stream sends this last event (with ``retry`` if given, so
            browsers reconnect to the restarted or another instance on your
            schedule) and ends cleanly; the browser resumes with ``Last-Event-ID``.
        compress: gzip the stream for clients that accept it, each event flushed
            at once. Off by default: it costs CPU per event, and compressing
            secrets beside attacker-chosen text can leak them (BREACH).

    Resuming: if ``events`` is an async iterable with an ``__sse_prelude__()``
    coroutine method (as a :class:`tinystream.broadcast.Subscription` has), the
    event it returns, unless None, is sent before the first item and after the
    ``retry`` field. That is how wire-only data (a subscription's position, as an
    id-only event a browser stores as ``lastEventId`` without dispatching it)
    reaches the client without being an item of the iterator.

    The headers go out with the first event, or after the server's
    ``first_item_wait`` if it is slow (a proxy's read timeout never fires
    first), with ``Cache-Control: no-cache`` and ``X-Accel-Buffering: no`` (nginx
    passes events through unbuffered), and never ``Connection: keep-alive``.
    To tell a browser to stop reconnecting, answer its request with 204.

    Raises:
        ValueError: ``ping`` is 0, negative or NaN; ``retry`` is negative; an
            event name contains CR or LF.
        TypeError: an argument has the wrong type.
    """

    __slots__ = ("error_event", "ping", "prelude", "retry", "shutdown_event")

    def __init__(
        self,
        events: Iterable[EventLike] | AsyncIterable[EventLike],
        ping: float | None = 15.0,
        retry: int | None = None,
        headers: HeadersArg = None,
        *,
        status: int = 200,
        error_event: str = "stream-error",
        shutdown_event: str = "shutdown",
        shutdown_data: str = "",
        shutdown_retry: int | None = None,
        compress: bool = False,
    ) -> None:
        if ping is not None:
            if isinstance(ping, bool) or not isinstance(ping, (int, float)):
                raise TypeError(f"ping must be a number of seconds or None, got {ping!r}")
            if math.isnan(ping) or ping <= 0:
                raise ValueError(f"ping must be > 0 seconds (None turns pings off), got {ping!r}")
        self.ping = None if ping is None or math.isinf(ping) else float(ping)
        self.retry = retry
        #: Bytes the server sends right after the head, before any event.
        self.prelude = b"" if retry is None else ServerSentEvent(retry=retry).encode()
        self.error_event = _final_event(_event_name("error_event", error_event), "", None)
        self.shutdown_event = _final_event(
            _event_name("shutdown_event", shutdown_event), shutdown_data, shutdown_retry
        )
        super().__init__(
            _map(events, encode_event, getattr(events, "__sse_prelude__", None)),
            status,
            headers,
            media_type=SSE_MEDIA_TYPE,
            compress=compress,
        )
        names = {name for name, _ in self.headers}
        if b"cache-control" not in names:
            self.headers.append(_NO_CACHE)
        if b"x-accel-buffering" not in names:
            self.headers.append(_NO_PROXY_BUFFERING)


class NDJSONResponse(StreamingResponse):
    """Newline-delimited JSON: one JSON document per line, ``application/x-ndjson``.

    Args:
        items: a sync or async iterable of JSON-serialisable objects.
        status, headers, compress: as for :class:`StreamingResponse`.

    An item that cannot be serialised ends the response early (truncated body):
    NDJSON has no way to say "error" in-band.

    Raises:
        TypeError: ``items`` is not an iterable of items.
    """

    __slots__ = ()

    def __init__(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        status: int = 200,
        headers: HeadersArg = None,
        *,
        compress: bool = False,
    ) -> None:
        super().__init__(
            _map(items, lambda item: (_dumps(item) + "\n").encode("utf-8")),
            status,
            headers,
            media_type=NDJSON_MEDIA_TYPE,
            compress=compress,
        )


_MEDIA_RANGE = re.compile(r"\s*([^\s;,]+)\s*((?:;[^,]*)?)")


def _accept_quality(accept_values: list[str], media_type: str) -> tuple[float, int]:
    """The q-value ``Accept`` gives ``media_type``, and how specific the match was.

    RFC 9110 §12.5.1: the most specific matching range decides (``type/sub`` over
    ``type/*`` over ``*/*``). Specificity: 2, 1, 0; ``(0.0, -1)`` when nothing matches.
    """
    kind, _, _ = media_type.partition("/")
    best_specificity, best_q = -1, 0.0
    for value in accept_values:
        for item in value.split(","):
            match = _MEDIA_RANGE.match(item)
            if not match or not match.group(1):
                continue
            media_range = match.group(1).lower()
            if media_range == media_type:
                specificity = 2
            elif media_range == kind + "/*":
                specificity = 1
            elif media_range == "*/*":
                specificity = 0
            else:
                continue
            q = 1.0
            for parameter in match.group(2).split(";"):
                name, _, number = parameter.partition("=")
                if name.strip().lower() == "q":
                    try:
                        q = min(max(float(number.strip()), 0.0), 1.0)
                    except ValueError:
                        q = 0.0  # a malformed q-value accepts nothing
                    if math.isnan(q):
                        q = 0.0
            if specificity > best_specificity:
                best_specificity, best_q = specificity, q
            elif specificity == best_specificity:
                best_q = max(best_q, q)
    return best_q, best_specificity


def wants_event_stream(accept_values: list[str]) -> bool:
    """True when ``Accept`` prefers ``text/event-stream`` over NDJSON.

    SSE must be acceptable (q > 0) and ranked above NDJSON by (q, specificity);
    a tie - ``*/*`` alone, or no Accept at all - goes to NDJSON, the default.
    """
    sse = _accept_quality(accept_values, "text/event-stream")
    if sse[0] <= 0:
        return False
    return sse > _accept_quality(accept_values, "application/x-ndjson")


def negotiate_stream(
    request: Any, items: Iterable[Any] | AsyncIterable[Any], **sse_options: Any
) -> EventSourceResponse | NDJSONResponse:
    """SSE or NDJSON for the same stream of JSON-serialisable ``items``, as ``Accept`` asks.

    When the request's ``Accept`` fields (all of them; q-values and wildcards
    honoured) prefer ``text/event-stream``, an :class:`EventSourceResponse` sending
    each item as one event whose ``data`` is its JSON, with ``sse_options`` passed
    on; otherwise an :class:`NDJSONResponse` of the same items.

    Args:
        request: the request whose ``Accept`` fields decide.
        items: a sync or async iterable of JSON-serialisable objects.
        sse_options: keyword arguments of :class:`EventSourceResponse` (``ping``,
            ``retry`` ...), used only when the answer is an event stream.

    Returns:
        An :class:`EventSourceResponse` or an :class:`NDJSONResponse`.

    Raises:
        TypeError: ``items`` is not an iterable of items.
    """
    if wants_event_stream(request.headers.get_all("accept")):
        # A str event is sent as its data: each item becomes one event of its JSON.
        return EventSourceResponse(_map(items, _dumps), **sse_options)
    return NDJSONResponse(items)
