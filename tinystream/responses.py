"""Response types: what a handler returns.

A response is a description - status, header fields and a body source - that the
connection turns into bytes. Header fields are checked and encoded here, when the
response is built, so a bad header is a ``ValueError`` in the handler that made it
(with the offending value in the message), never a half-sent response.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any

__all__ = [
    "BaseResponse",
    "HeadersArg",
    "JSONResponse",
    "Response",
    "StreamingResponse",
]

HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None
#: What a streaming producer may yield: bytes-like items, or str (sent as UTF-8).
Chunk = bytes | bytearray | memoryview | str

# The response-field rules every way of building a response shares (native
# responses here, the response writer, the ASGI adapter).
#: RFC 9110 §5.1: a field name is a token.
FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: RFC 9110 §5.5: a field value is visible characters, spaces and tabs (and
#: obs-text). CR and LF would inject fields; other controls h11 refuses at send time
#: or a client may choke on: all are refused when a response is built.
FIELD_VALUE_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Framing is ours to decide (RFC 9112 §6): a handler cannot set these.
FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding"})
# Statuses whose responses never have a body (RFC 9110 §6.4.1, §15.3.5, §15.4.5).
NO_BODY_STATUSES = frozenset({204, 304})


def encode_headers(headers: HeadersArg) -> list[tuple[bytes, bytes]]:
    """Check and encode header fields to ``(lower-case name, value)`` byte pairs.

    Raises:
        TypeError: a name or value is not a str.
        ValueError: a name is not a token, a value holds a control character
            (CR, LF, NUL... - a tab is allowed), or a
            framing field (Content-Length, Transfer-Encoding) is given.
    """
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    encoded: list[tuple[bytes, bytes]] = []
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header names and values must be str, got {name!r}: {value!r}")
        if not name.isascii() or not FIELD_NAME.fullmatch(raw_name := name.lower().encode()):
            raise ValueError(f"invalid header name {name!r}")
        raw_value = value.strip(" \t").encode("latin-1")
        if FIELD_VALUE_CONTROL.search(raw_value):
            raise ValueError(f"header {name!r} has a control character in its value: {value!r}")
        if raw_name in FRAMING_FIELDS:
            raise ValueError(f"header {name!r} is set by the server from the body; do not set it")
        encoded.append((raw_name, raw_value))
    return encoded


@functools.lru_cache(maxsize=256)
def _content_type(media_type: str | None, text: bool) -> tuple[bytes, bytes] | None:
    # Cached: a handful of media types serve every response, and sharing the field
    # keeps per-response (per idle stream) memory down.
    if media_type is None:
        return (b"content-type", b"text/plain; charset=utf-8") if text else None
    if media_type.startswith("text/") and "charset" not in media_type:
        media_type += "; charset=utf-8"
    return (b"content-type", media_type.encode("latin-1"))


def _check_status(status: int) -> None:
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"status must be an int from 200 to 599, got {status!r}")


class BaseResponse:
    """Status and header fields shared by every response type."""

    __slots__ = ("compress", "headers", "status")

    def __init__(
        self, status: int, headers: HeadersArg, media_type: str | None, text: bool
    ) -> None:
        _check_status(status)
        self.status = status
        #: gzip the body when the client accepts gzip (a fixed body only from
        #: COMPRESS_MIN bytes; a stream chunk by chunk, each flushed at once).
        self.compress = False
        self.headers = encode_headers(headers)
        content_type = _content_type(media_type, text)
        if content_type is not None and (
            not self.headers or not any(n == b"content-type" for n, _ in self.headers)
        ):
            self.headers.append(content_type)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status}>"


class Response(BaseResponse):
    """A response whose whole body is known: sent with ``Content-Length``.

    Args:
        content: the body; ``str`` is encoded as UTF-8 and defaults the media type
            to ``text/plain; charset=utf-8``.
        status: 200 to 599 (informational responses are the server's business).
        headers: extra fields, as a mapping or ``(name, value)`` pairs.
        media_type: the ``Content-Type``; ``text/*`` gets ``charset=utf-8``.
        compress: gzip the body for clients that accept it, if it is at least
            512 bytes; ``Vary: Accept-Encoding`` is sent either way.

    Raises:
        TypeError / ValueError: bad content, status or header (see :func:`encode_headers`).
    """

    __slots__ = ("body",)

    def __init__(
        self,
        content: bytes | str = b"",
        status: int = 200,
        headers: HeadersArg = None,
        media_type: str | None = None,
        *,
        compress: bool = False,
    ) -> None:
        if isinstance(content, str):
            body = content.encode("utf-8")
            text = True
        elif isinstance(content, (bytes, bytearray, memoryview)):
            body = bytes(content)
            text = False
        else:
            raise TypeError(f"Response content must be bytes or str, got {type(content).__name__}")
        if body and status in NO_BODY_STATUSES:
            raise ValueError(f"a {status} response cannot have a body")
        super().__init__(status, headers, media_type, text and bool(body))
        self.body = body
        self.compress = compress


class JSONResponse(Response):
    """A JSON body (``application/json``), compact and UTF-8.

    Raises:
        TypeError: ``obj`` is not JSON-serialisable.
        ValueError: ``obj`` contains NaN or an infinity (not valid JSON).
    """

    __slots__ = ()

    def __init__(
        self, obj: Any, status: int = 200, headers: HeadersArg = None, *, compress: bool = False
    ) -> None:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        super().__init__(
            body.encode("utf-8"), status, headers, "application/json", compress=compress
        )


class StreamingResponse(BaseResponse):
    """A body produced piece by piece, sent as soon as each piece exists.

    HTTP/1.1 clients get ``Transfer-Encoding: chunked``, HTTP/1.0 clients a body
    delimited by closing the connection. Reading pauses the producer whenever the
    client is slower than it (backpressure), and the producer is closed
    (``aclose()``/``close()``, so its ``finally`` runs) as soon as the client goes
    away, the response ends, or the server shuts down.

    Args:
        content: a sync or async iterable of ``bytes``/``str`` items. A sync one
            runs in a worker thread, so a blocking ``next()`` stalls nobody else;
            a list or tuple is iterated in place. Empty items are skipped.
        compress: gzip the stream for clients that accept it; every chunk is
            flushed on its own, so it still arrives at once.

    Raises:
        TypeError: ``content`` is not an iterable of chunks (``bytes``/``str``
            themselves are refused: iterating them would give single characters).
    """

    __slots__ = ("content", "content_length")

    def __init__(
        self,
        content: Iterable[Chunk] | AsyncIterable[Chunk],
        status: int = 200,
        headers: HeadersArg = None,
        media_type: str | None = None,
        *,
        compress: bool = False,
    ) -> None:
        if isinstance(content, (bytes, bytearray, memoryview, str)):
            raise TypeError(
                "StreamingResponse content must be an iterable of chunks, not "
                f"{type(content).__name__}; use Response for a fixed body"
            )
        if not isinstance(content, (Iterable, AsyncIterable)):
            raise TypeError(
                f"StreamingResponse content must be a sync or async iterable, got {content!r}"
            )
        if status in NO_BODY_STATUSES:
            raise ValueError(f"a {status} response cannot have a body")
        super().__init__(status, headers, media_type, False)
        self.content: Iterable[Chunk] | AsyncIterable[Chunk] = content
        #: When set, the body is sent with this ``Content-Length`` instead of chunked.
        self.content_length: int | None = None
        self.compress = compress
