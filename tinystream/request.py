"""The request a handler receives, and the reader that feeds it its body."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from .datastructures import Headers, QueryParams
from .errors import ClientDisconnected, HTTPError

__all__ = ["BodyListener", "BodyReader", "Disconnect", "Request", "parse_target"]

# A '%' not followed by two hex digits (RFC 3986 §2.1).
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_target(method: bytes, target: bytes) -> tuple[str, str]:
    """Split a request target into its percent-decoded path and its raw query.

    Accepts the origin form (``/a/b?q``), the absolute form
    (``http://host/a?q``, RFC 9112 §3.2.2) and ``*`` for OPTIONS.

    Raises:
        HTTPError: 400 for any other form, a fragment (``#``) anywhere, non-ASCII
            bytes, an invalid percent-escape, or an escape that decodes to invalid UTF-8.
    """
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise HTTPError(400, "request target is not ASCII") from None
    if text == "*" and method == b"OPTIONS":
        return "*", ""
    if not text.startswith("/"):
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise HTTPError(400, "invalid request target")
        slash = rest.find("/")
        text = rest[slash:] if slash >= 0 else "/"
    # RFC 9112 §3.2: no form of request target has a fragment (a client strips it,
    # RFC 9110 §7.1). Refused wherever it is, after the query too: two parsers that
    # disagree on where a target ends disagree on what was asked for.
    if "#" in text:
        raise HTTPError(400, "request target contains a fragment")
    raw_path, _, query = text.partition("?")
    if "%" not in raw_path:
        return raw_path, query
    if _BAD_ESCAPE.search(raw_path):
        raise HTTPError(400, "invalid percent-encoding in the request target")
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "percent-encoded request path is not UTF-8") from None
    return path, query


class BodyListener(Protocol):
    """Who a :class:`BodyReader` reports to (the connection's exchange)."""

    def body_unread(self, unread: int) -> None:
        """The number of received, unread body bytes changed (flow control)."""

    def body_first_read(self) -> None:
        """The handler asked for the body for the first time (``100 Continue``)."""


class BodyReader:
    """The request body on its way from the connection to the handler.

    The connection :meth:`feed`\\ s chunks as h11 parses them and :meth:`finish`\\ es
    or :meth:`fail`\\ s it; the handler reads with :meth:`read`. The ``listener`` is
    told the number of unread bytes after every change, which is how the connection
    pauses the socket when a handler reads slowly, and when the handler first asks
    for the body (the moment to send ``100 Continue``).
    """

    __slots__ = ("_chunks", "_complete", "_error", "_listener", "_waiter", "started", "unread")

    def __init__(self, listener: BodyListener | None = None) -> None:
        self._chunks: list[bytes] = []
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.unread = 0
        self.started = False
        self._listener = listener

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.unread += len(data)
        self._wake()
        if self._listener is not None:
            self._listener.body_unread(self.unread)

    def detach(self) -> None:
        """The exchange ended: tell it nothing more, and wait for nothing more.

        (The listener holds this reader too: letting go of it breaks the cycle,
        so both are freed when the request is, not by the cyclic collector.) A
        reader still waiting for the rest - an ASGI app's ``receive()`` after its
        response - gets ``ClientDisconnected`` instead of waiting for ever.
        """
        self._listener = None
        if not self._complete and self._error is None:
            self.fail(ClientDisconnected("the response ended before the request body"))

    def finish(self) -> None:
        self._complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes | None:
        """Every chunk received and not yet read, joined; ``None`` at the end."""
        if not self.started:
            self.started = True
            if self._listener is not None:
                self._listener.body_first_read()
        while True:
            if self._chunks:
                chunks, self._chunks = self._chunks, []
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self.unread = 0
                if self._listener is not None:
                    self._listener.body_unread(0)
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class Disconnect:
    """The "client went away" signal of one request, made cheap for the common case.

    Most requests finish long before anyone asks whether the client left, so no
    event object is allocated until someone waits.
    """

    __slots__ = ("_waiter", "happened")

    def __init__(self) -> None:
        self.happened = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self.happened = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        if self.happened:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        # shield: one waiter being cancelled must not cancel the shared future.
        await asyncio.shield(self._waiter)


def _empty_body() -> BodyReader:
    reader = BodyReader()
    reader.finish()
    return reader


class Request:
    """One HTTP request, as a handler sees it.

    Attributes:
        method: ``"GET"``, ``"POST"`` ...
        target: the raw request target, as sent (``"/a%20b?x=1"``).
        path: the percent-decoded path (``"/a b"``).
        query: the raw query string (``"x=1"``), without the ``?``.
        headers: case-insensitive, multi-valued :class:`~tinystream.datastructures.Headers`.
        http_version: ``"1.1"`` or ``"1.0"``.
        client: the peer's ``(host, port)``, or ``None`` (Unix sockets).
        path_params: values captured by a :class:`~tinystream.Router` route.
    """

    __slots__ = (
        "_body",
        "_body_cache",
        "_disconnected",
        "_headers",
        "_path_params",
        "_query_params",
        "_raw_headers",
        "_shutting_down",
        "_streamed",
        "client",
        "http_version",
        "method",
        "path",
        "query",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        *,
        headers: Headers | None = None,
        http_version: str = "1.1",
        client: tuple[str, int] | None = None,
        body: BodyReader | None = None,
        disconnected: Disconnect | None = None,
        shutting_down: asyncio.Event | None = None,
        split_target: tuple[str, str] | None = None,
        raw_headers: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """A request, as the server builds it (tests may build one too).

        ``split_target`` is ``(path, query)`` when the caller - the server - has
        already checked and split ``target`` with :func:`parse_target`.
        ``raw_headers`` (instead of ``headers``) are fields with lower-case names
        as h11 parsed them: :attr:`headers` is built from them when first read.

        Raises:
            HTTPError: 400 for a target :func:`parse_target` refuses.
        """
        if split_target is None:
            split_target = parse_target(method.encode("ascii"), target.encode("ascii"))
        path, query = split_target
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self._headers = headers
        self._raw_headers = raw_headers
        self.http_version = http_version
        self.client = client
        self._path_params: dict[str, str] | None = None
        self._query_params: QueryParams | None = None
        self._body = body if body is not None else _empty_body()
        self._body_cache: bytes | None = None
        self._streamed = False
        self._disconnected = disconnected if disconnected is not None else Disconnect()
        self._shutting_down = shutting_down if shutting_down is not None else asyncio.Event()

    @property
    def headers(self) -> Headers:
        """Case-insensitive, multi-valued :class:`~tinystream.datastructures.Headers`."""
        headers = self._headers
        if headers is None:
            # Built on first use: a handler that never reads a field never pays for them.
            raw = self._raw_headers
            headers = self._headers = Headers.from_lowercase(list(raw) if raw else [])
        return headers

    @headers.setter
    def headers(self, headers: Headers) -> None:
        self._headers = headers

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The fields as received: ``(lower-case name, value)`` byte pairs, in order.

        A new list each time; cheaper than :attr:`headers` when only the bytes
        are wanted (the ASGI adapter passes them on as the scope's ``headers``).
        """
        raw = self._raw_headers
        if raw is None or self._headers is not None:
            return self.headers.raw  # (``headers`` may have been replaced)
        return list(raw)

    @property
    def path_params(self) -> dict[str, str]:
        """Values captured by a :class:`~tinystream.Router` route (``{}`` without one)."""
        if self._path_params is None:
            self._path_params = {}  # made on demand: most requests never need one
        return self._path_params

    @path_params.setter
    def path_params(self, params: dict[str, str]) -> None:
        self._path_params = params

    @property
    def query_params(self) -> QueryParams:
        """The decoded query string: ``get(key)`` for the first value, ``get_all(key)``."""
        if self._query_params is None:
            self._query_params = QueryParams(self.query)
        return self._query_params

    @property
    def last_event_id(self) -> str | None:
        """The ``Last-Event-ID`` header a reconnecting EventSource sends, if any."""
        return self.headers.get("last-event-id")

    async def stream(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk, as it arrives.

        Reading is flow-controlled: while the handler does not read, the server
        stops reading from the socket once a bounded amount is buffered. After
        :meth:`body` this yields the cached body once.

        Raises:
            RuntimeError: the body was already consumed by an earlier ``stream()``.
            HTTPError: 413 when the body exceeds the server's ``max_body_size``.
            ClientDisconnected: the client went away before the body ended.
        """
        if self._body_cache is not None:
            if self._body_cache:
                yield self._body_cache
            return
        if self._streamed:
            raise RuntimeError("the request body has already been consumed by stream()")
        self._streamed = True
        while True:
            chunk = await self._body.read()
            if chunk is None:
                return
            yield chunk

    async def body(self) -> bytes:
        """The whole body (cached: a second call returns the same bytes).

        Raises:
            RuntimeError / HTTPError / ClientDisconnected: as for :meth:`stream`.
        """
        if self._body_cache is None:
            chunks = [chunk async for chunk in self.stream()]
            self._body_cache = b"".join(chunks)
        return self._body_cache

    async def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            HTTPError: 400 when the body is not valid UTF-8 JSON.
        """
        try:
            return json.loads(await self.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None

    def is_disconnected(self) -> bool:
        """True once the client has gone away."""
        return self._disconnected.happened

    async def wait_disconnected(self) -> None:
        """Return when the client goes away."""
        await self._disconnected.wait()

    def is_shutting_down(self) -> bool:
        """True once the server has begun a graceful shutdown: long streams should end."""
        return self._shutting_down.is_set()

    async def wait_shutting_down(self) -> None:
        """Return when the server begins a graceful shutdown."""
        await self._shutting_down.wait()

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.http_version}>"
