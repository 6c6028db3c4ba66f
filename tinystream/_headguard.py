"""Checks on the raw bytes of a request head that h11 does not make.

h11 0.16 (measured) holds a head to ``max_incomplete_event_size``
only while the head is incomplete, so a large head that arrives in one read slips
past it, and it silently unfolds obs-fold continuation lines. RFC 9112 §5.2 lets a
server refuse obs-fold with 400, and we do: folding is a classic way to smuggle a
header past one parser and not another. h11 also ends a line at a bare LF, so
``Dummy: x\nContent-Length: 23`` is two fields to h11 and one to a proxy that splits
only on CRLF. RFC 9112 §2.2 lets a recipient accept a bare LF; strict parsers
(llhttp) refuse it, and so do we, anywhere in the head.

:class:`HeadGuard` sees every byte of a head before h11 parses it. It finds the end
of the head (the first empty line) and, up to there, counts bytes and looks for a
line that starts with a space or a tab and for an LF without a CR before it. It is
pure and incremental: a pattern split across two reads is still found, because the
last two bytes of the previous piece are kept.

Before a request line, :meth:`HeadGuard.skip_empty_lines` finds the empty lines a
server SHOULD ignore (RFC 9112 §2.2: older clients send a CRLF after a POST body),
which h11 refuses. They count against the head's size, so an endless stream of
them is refused like an endless head.
"""

from __future__ import annotations

__all__ = ["HeadGuard", "HeadRejected"]


class HeadRejected(Exception):
    """The request head breaks a rule; ``status`` is the response to give."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HeadGuard:
    """Scans one request head at a time.

    Call :meth:`feed` with each piece of incoming bytes while a head is expected.
    It returns the offset just past the head's end within that piece once the head
    is complete (the guard is then finished: :attr:`active` is false until
    :meth:`reset`), or ``None`` when the head goes on.
    """

    __slots__ = ("_cr", "_seen", "_tail", "active", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.active = True
        self._seen = 0  # head bytes scanned so far, before the current piece
        self._tail = b""  # the previous piece's last two bytes: the longest pattern is 3
        self._cr = False  # the last piece's empty lines ended with a CR: an LF must follow

    def reset(self) -> None:
        """Start watching for the next head."""
        self.active = True
        self._seen = 0
        self._tail = b""
        self._cr = False

    def skip_empty_lines(self, data: bytes | bytearray) -> int:
        """How many leading bytes of ``data`` are empty lines before the request line.

        Call it on each piece until the request line starts, then :meth:`feed` the
        rest. An empty line is CRLF or a bare LF (nothing is delimited by it, so
        it cannot smuggle anything); a CR must be followed by an LF, even across pieces.

        Raises:
            HeadRejected: 400 for a CR without LF, 400 when they exceed ``max_size``.
        """
        if not self._cr and data[:1] not in _CR_LF:
            return 0  # the common case: a request line at once
        rest = data.lstrip(b"\r\n")
        skipped = len(data) - len(rest)
        run = b"\r" + data[:skipped] if self._cr else bytes(data[:skipped])
        # A CR at the very end may be the first half of a CRLF split across pieces.
        self._cr = not rest and run.endswith(b"\r")
        if self._cr:
            run = run[:-1]
        if b"\r" in run.replace(b"\r\n", b""):
            raise HeadRejected(400, "CR without LF before the request line")
        self._seen += skipped
        if self._seen > self.max_size:
            raise HeadRejected(400, "too many empty lines before the request line")
        return skipped

    def feed(self, data: bytes | bytearray) -> int | None:
        """Scan the next piece of the head.

        Raises:
            HeadRejected: 431 when the head is larger than ``max_size``, 400 for
                obs-fold or a bare LF.
        """
        tail = self._tail
        # Scan no further than the size limit (+ the 4 bytes of a terminator), so a
        # large read holding a head and a body is never copied whole.
        budget = self.max_size - self._seen + 4
        window: bytes | bytearray = tail + data[:budget] if tail else data[:budget]
        offset = len(tail)
        end = _end_of_head(window)
        head_part = window if end < 0 else window[:end]
        # A line that begins with SP or HTAB is an obs-fold continuation.
        if head_part.find(b"\n ") >= 0 or head_part.find(b"\n\t") >= 0:
            raise HeadRejected(400, "obsolete line folding in the request head")
        # Every LF must follow a CR. An LF at the window's start is the kept tail's
        # first byte, checked with the byte before it in an earlier piece; the first
        # byte of a head (no tail yet) has nothing before it, so it is a bare LF.
        if head_part.count(b"\n", 1 if tail else 0) != head_part.count(b"\r\n"):
            raise HeadRejected(400, "bare LF in the request head (lines end with CRLF)")
        if end < 0:
            self._seen += len(data)
            if self._seen > self.max_size:
                raise HeadRejected(431, "request head too large")
            self._tail = bytes(window[-2:])
            return None
        if self._seen + end - offset > self.max_size:
            raise HeadRejected(431, "request head too large")
        self.active = False
        return end - offset


_CR_LF = (b"\r", b"\n")


def _end_of_head(window: bytes | bytearray) -> int:
    """Offset just past the empty line that ends a head, or -1.

    h11 accepts bare LF line endings as well as CRLF, so the empty line is an LF
    followed by an optional CR and an LF (this also matches ``\r\n\r\n``): a head
    ended that way is found, then refused for its bare LF.
    """
    with_cr = window.find(b"\n\r\n")
    bare = window.find(b"\n\n")
    if bare < 0 or (0 <= with_cr < bare):
        return with_cr + 3 if with_cr >= 0 else -1
    return bare + 2
