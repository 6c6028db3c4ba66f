"""Checks on the raw bytes of a chunked request body that h11 does not make.

h11 0.16 (measured: h11 reads them without complaint) serves chunk-size lines that strict parsers
(llhttp) refuse: nothing after ``;`` (``5;``), an unclosed quoted string in a
chunk extension, whitespace after the size (``5 ``). Two parsers that disagree on
where a chunk ends disagree on where the body ends, and what follows it is read
as the next request by one of them: a smuggling shape. RFC 9112 §7.1.1::

    chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    chunk-ext  = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    chunk-ext-val = token / quoted-string

BWS is allowed around ``;`` and ``=``, except right after the size, where llhttp
refuses it and so do we. Trailer lines, like head lines, must end with CRLF.

:class:`ChunkGuard` sees every body byte before h11 parses it. It keeps the size of
the chunk being read, so it skips payload bytes by counting (never copying or
scanning them) and checks only size lines, the CRLF after each payload, and the
trailer section's line ends. It is pure and incremental: a line split across
reads is kept until its end arrives.
"""

from __future__ import annotations

import re

from .chunked import MAX_SIZE_LINE, MAX_TRAILER_SIZE, ChunkedDecodingError

__all__ = ["ChunkGuard"]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9110 §5.6.4: qdtext and quoted-pair (obs-text allowed in both).
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_EXT = rb"%s(?:[ \t]*=[ \t]*(?:%s|%s))?" % (_TOKEN, _TOKEN, _QUOTED)
# No whitespace between the size and the first ";" (llhttp); BWS elsewhere (RFC).
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)(?:;[ \t]*%s(?:[ \t]*;[ \t]*%s)*)?" % (_EXT, _EXT))
# The same with its CRLF, matched in place: the fast path for a line within one piece.
_SIZE_LINE_CRLF = re.compile(_SIZE_LINE.pattern + rb"\r\n")
#: Chunk sizes past 64 bits are refused, as llhttp does: no real body is that long.
_MAX_CHUNK = 2**64 - 1

# States.
_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class ChunkGuard:
    """Scans one chunked body.

    Call :meth:`feed` with each piece of the body as it arrives (the first piece
    may hold more after the body: a pipelined request). It returns the offset just
    past the body's end within that piece once the body is complete, or ``None``
    while it goes on.
    """

    __slots__ = ("_crlf", "_line", "_remaining", "_state", "_trailer_size")

    def __init__(self) -> None:
        self._state = _SIZE
        self._remaining = 0  # payload bytes of the current chunk still to come
        self._crlf = 0  # bytes of the CRLF after a payload seen so far
        self._line = bytearray()  # an incomplete line carried over from earlier pieces
        self._trailer_size = 0

    def feed(self, data: bytes | bytearray) -> int | None:
        """Scan the next piece of the body.

        Raises:
            ChunkedDecodingError: the body breaks RFC 9112 §7.1 as llhttp reads it.
        """
        if self._state == _DONE:
            return 0
        pos = 0
        size = len(data)
        while pos < size:
            state = self._state
            if state == _DATA:
                remaining = self._remaining
                if remaining > size - pos:
                    self._remaining = remaining - (size - pos)
                    return None
                pos += remaining
                self._remaining = 0
                if data.startswith(b"\r\n", pos):  # the usual case: CRLF in this piece
                    pos += 2
                    self._state = _SIZE
                else:
                    self._state = _DATA_CRLF
            elif state == _SIZE and not self._line and (m := _SIZE_LINE_CRLF.match(data, pos)):
                if m.end() - pos > MAX_SIZE_LINE:
                    raise ChunkedDecodingError("chunk size line too long")
                pos = m.end()
                self._set_size(m[1])
            elif state == _DATA_CRLF:
                if data[pos] != b"\r\n"[self._crlf]:
                    raise ChunkedDecodingError("chunk data not followed by CRLF")
                pos += 1
                self._crlf += 1
                if self._crlf == 2:
                    self._crlf = 0
                    self._state = _SIZE
            else:
                end = data.find(b"\n", pos)
                if end < 0:
                    self._carry(data, pos)
                    return None
                line = self._line
                if line:
                    line += data[pos : end + 1]
                    self._line = bytearray()
                    whole: bytes | bytearray = line
                    start, stop = 0, len(line) - 1
                else:
                    whole, start, stop = data, pos, end
                pos = end + 1
                if stop == start or whole[stop - 1] != 13:  # 13: CR
                    raise ChunkedDecodingError("bare LF in a chunked body (lines end with CRLF)")
                if state == _SIZE:
                    if stop - start > MAX_SIZE_LINE:
                        raise ChunkedDecodingError("chunk size line too long")
                    self._size_line(whole, start, stop - 1)
                elif stop - 1 == start:  # the empty line that ends the trailer section
                    self._state = _DONE
                    return pos
                else:
                    self._trailer_size += stop + 1 - start
                    if self._trailer_size > MAX_TRAILER_SIZE:
                        raise ChunkedDecodingError("trailer section too long")
        return None

    @property
    def done(self) -> bool:
        """True once the body has ended (what follows is not this guard's)."""
        return self._state == _DONE

    def _size_line(self, data: bytes | bytearray, start: int, stop: int) -> None:
        match = _SIZE_LINE.fullmatch(data, start, stop)
        if match is None:
            line = bytes(data[start:stop])[:40]
            raise ChunkedDecodingError(f"invalid chunk size line {line.decode('latin-1')!r}")
        self._set_size(match[1])

    def _set_size(self, digits: bytes) -> None:
        chunk = int(digits, 16)
        if chunk > _MAX_CHUNK:
            raise ChunkedDecodingError("chunk size too large")
        self._remaining = chunk
        self._state = _DATA if chunk else _TRAILER

    def _carry(self, data: bytes | bytearray, pos: int) -> None:
        # An incomplete line: keep it, bounded like a whole one.
        self._line += data[pos:]
        if self._state == _SIZE and len(self._line) > MAX_SIZE_LINE:
            raise ChunkedDecodingError("chunk size line too long")
        if self._trailer_size + len(self._line) > MAX_TRAILER_SIZE:
            raise ChunkedDecodingError("trailer section too long")
