"""gzip that still streams: each chunk is compressed and sync-flushed on its own.

A compressor normally holds bytes back until it has enough to compress well,
which would hold an event back until the next ones arrive. ``Z_SYNC_FLUSH``
after every chunk ends each one on a byte boundary the client can decompress at
once, at the cost of a few bytes per chunk (an empty stored block, 00 00 ff ff).
The compression context is kept across chunks, so repeated field names and
similar events still compress well.
"""

from __future__ import annotations

import gzip
import zlib

__all__ = [
    "COMPRESS_MIN",
    "GzipStream",
    "accepts_gzip",
    "compress_stream",
    "compress_whole",
    "gzip_body",
]

Fields = list[tuple[bytes, bytes]]

_VARY = (b"vary", b"Accept-Encoding")
_GZIP = (b"content-encoding", b"gzip")

#: Fixed bodies smaller than this are sent as they are: gzip's 18-byte frame and
#: the CPU would cost more than they save (nginx's gzip_min_length is 20, many
#: frameworks use 500).
COMPRESS_MIN = 512  # bytes
LEVEL = 6  # zlib's default: most of the gain of 9 for a fraction of the CPU


def accepts_gzip(accept_encoding: list[str]) -> bool:
    """True when ``Accept-Encoding`` allows gzip (RFC 9110 §12.5.3).

    ``gzip`` (or ``x-gzip``) with q > 0 accepts it, q=0 refuses it; without a
    gzip entry, ``*`` with q > 0 accepts it.
    """
    gzip_q: float | None = None
    star_q: float | None = None
    for value in accept_encoding:
        for item in value.split(","):
            coding, _, parameters = item.partition(";")
            coding = coding.strip().lower()
            q = 1.0
            name, _, number = parameters.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(number)
                except ValueError:
                    q = 0.0
            if coding in ("gzip", "x-gzip"):
                gzip_q = q
            elif coding == "*":
                star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


def gzip_body(body: bytes) -> bytes:
    # mtime=0: the same body always compresses to the same bytes (cacheable).
    return gzip.compress(body, compresslevel=LEVEL, mtime=0)


class GzipStream:
    """Compresses a stream chunk by chunk; every output can be decoded at once."""

    __slots__ = ("_compressor",)

    def __init__(self) -> None:
        # wbits=31: a gzip header and trailer around the deflate stream.
        self._compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)

    def compress(self, chunk: bytes) -> bytes:
        return self._compressor.compress(chunk) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._compressor.flush(zlib.Z_FINISH)


def compress_whole(
    headers: Fields, body: bytes, accept_encoding: list[str]
) -> tuple[Fields, bytes]:
    """A fixed response's fields and body, gzipped if worth it and accepted.

    ``Vary: Accept-Encoding`` is always added: a cache must not serve one
    client's encoding to another (RFC 9110 §12.5.5).
    """
    headers = [*headers, _VARY]
    if len(body) >= COMPRESS_MIN and accepts_gzip(accept_encoding):
        return [*headers, _GZIP], gzip_body(body)
    return headers, body


def compress_stream(
    headers: Fields, accept_encoding: list[str]
) -> tuple[Fields, GzipStream | None]:
    """A stream's fields, and the compressor for its chunks if the client accepts gzip."""
    headers = [*headers, _VARY]
    if not accepts_gzip(accept_encoding):
        return headers, None
    return [*headers, _GZIP], GzipStream()
