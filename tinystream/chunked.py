"""Chunked transfer coding (RFC 9112 §7.1): framing for the server, decoding for clients and tests.

This module is pure: bytes in, bytes out, no I/O and no event loop, so every rule
here can be tested by feeding it byte strings.

Encoding. A chunk is ``<size in hex>\\r\\n<payload>\\r\\n``; the body ends with the
*last chunk* ``0\\r\\n``, optional trailer fields, and an empty line. Because a
zero-length chunk *is* the last chunk, an empty payload must never be framed as a
chunk: :func:`encode_chunk` refuses it and the server skips empty items.

:func:`encode_chunk` frames a payload into one bytes object, which the server
hands to one ``transport.write``. :func:`chunk_pieces` returns the size line, the
payload itself and the CRLF instead, for a writer that can send them without
copying the payload; the server does not use it, because the transport method
that would (``writelines``) never pauses the protocol on CPython 3.12.0-3.12.8
and 3.13.0-3.13.1 (gh-127655), and a copy costs microseconds.

Decoding. :class:`ChunkedDecoder` takes the body in pieces of any size - a size
line, a CRLF or a payload may be split anywhere - and hands back payload bytes as
soon as they are known, so a client can read an endless stream incrementally.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "LAST_CHUNK",
    "ChunkedDecoder",
    "ChunkedDecodingError",
    "chunk_pieces",
    "encode_chunk",
    "encode_last_chunk",
]

#: The terminal chunk with no trailers: the end of every chunked body we send.
LAST_CHUNK = b"0\r\n\r\n"

_CRLF = b"\r\n"


def encode_chunk(payload: bytes | bytearray | memoryview) -> bytes:
    """Frame ``payload`` as one chunk.

    Raises:
        ValueError: ``payload`` is empty; an empty chunk would end the body.
    """
    size = len(payload)
    if not size:
        raise ValueError("an empty payload cannot be framed: a zero-length chunk ends the body")
    if type(payload) is not bytes:
        payload = bytes(payload)
    return b"%x\r\n%b\r\n" % (size, payload)


def chunk_pieces(
    payload: bytes | bytearray | memoryview,
) -> tuple[bytes, bytes | bytearray | memoryview, bytes]:
    """Frame ``payload`` as ``(size_line, payload, CRLF)`` without copying the payload.

    Raises:
        ValueError: ``payload`` is empty.
    """
    size = len(payload)
    if not size:
        raise ValueError("an empty payload cannot be framed: a zero-length chunk ends the body")
    return (b"%x\r\n" % size, payload, _CRLF)


# Field names and values as RFC 9110 §5.1 and §5.5 allow them in a trailer section.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def encode_last_chunk(trailers: Iterable[tuple[str | bytes, str | bytes]] = ()) -> bytes:
    """The terminal chunk, with trailer fields if any (RFC 9112 §7.1.2).

    Raises:
        ValueError: a trailer name is not a token, or a value contains CR, LF or NUL.
    """
    lines = [b"0\r\n"]
    for name, value in trailers:
        raw_name = name.encode("ascii") if isinstance(name, str) else name
        raw_value = value.encode("latin-1") if isinstance(value, str) else value
        if not _TOKEN.fullmatch(raw_name):
            raise ValueError(f"invalid trailer name {name!r}")
        raw_value = raw_value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(raw_value):
            raise ValueError(f"invalid trailer value for {name!r}: {value!r}")
        lines.append(raw_name + b": " + raw_value + _CRLF)
    lines.append(_CRLF)
    return b"".join(lines)


class ChunkedDecodingError(ValueError):
    """The bytes are not a valid chunked body."""


# Decoder states.
_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)

#: A size line longer than this is refused: 16 hex digits cover any real size, and
#: chunk extensions (which we skip) have no business being kilobytes long.
MAX_SIZE_LINE = 4096  # bytes
#: Trailer section limit, as for a request head.
MAX_TRAILER_SIZE = 16 * 1024  # bytes

_HEX = re.compile(rb"[0-9A-Fa-f]+")


class ChunkedDecoder:
    """Incremental decoder for a chunked body.

    Feed bytes with :meth:`feed` in pieces of any size; it returns the payload
    bytes that those pieces completed (possibly ``b""``). After the last chunk and
    its trailer section, :attr:`done` is true, :attr:`trailers` holds the trailer
    fields, and :attr:`unused` holds any bytes fed past the end of the body (the
    start of the next message on a keep-alive connection).

    Chunk extensions are accepted and ignored, as RFC 9112 §7.1.1 lets a recipient do.
    """

    __slots__ = ("_buffer", "_remaining", "_state", "trailers", "unused")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = _SIZE
        self._remaining = 0
        self.trailers: list[tuple[bytes, bytes]] = []
        self.unused = b""

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailer section have been read."""
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Decode the next piece of the body; returns the payload bytes it completes.

        Raises:
            ChunkedDecodingError: the body is malformed (the decoder is then unusable).
        """
        if self._state == _DONE:
            self.unused += bytes(data)
            return b""
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        while True:
            if self._state == _DATA:
                if not buffer:
                    break
                take = min(self._remaining, len(buffer))
                out.append(bytes(buffer[:take]))
                del buffer[:take]
                self._remaining -= take
                if self._remaining:
                    break
                self._state = _DATA_CRLF
            elif self._state == _DATA_CRLF:
                if len(buffer) < 2:
                    break
                if buffer[:2] != _CRLF:
                    raise ChunkedDecodingError("chunk payload is not followed by CRLF")
                del buffer[:2]
                self._state = _SIZE
            elif self._state == _SIZE:
                end = buffer.find(_CRLF)
                if end < 0:
                    if len(buffer) > MAX_SIZE_LINE:
                        raise ChunkedDecodingError("chunk size line too long")
                    break
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                size_field = line.split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size_field):
                    raise ChunkedDecodingError(f"invalid chunk size line {line!r}")
                self._remaining = int(size_field, 16)
                self._state = _DATA if self._remaining else _TRAILER
            elif self._state == _TRAILER:
                end = buffer.find(_CRLF)
                if end < 0:
                    if len(buffer) > MAX_TRAILER_SIZE:
                        raise ChunkedDecodingError("trailer section too long")
                    break
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if not line:
                    self._state = _DONE
                    self.unused = bytes(buffer)
                    buffer.clear()
                    break
                name, colon, value = line.partition(b":")
                if not colon or not _TOKEN.fullmatch(name):
                    raise ChunkedDecodingError(f"invalid trailer line {line!r}")
                self.trailers.append((name.lower(), value.strip(b" \t")))
                if sum(len(n) + len(v) for n, v in self.trailers) > MAX_TRAILER_SIZE:
                    raise ChunkedDecodingError("trailer section too long")
        return b"".join(out)
