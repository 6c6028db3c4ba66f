"""The chunk guard: chunk-size lines as llhttp reads them, however the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinystream._chunkguard import ChunkGuard
from tinystream.chunked import ChunkedDecodingError

AFTER = b"GET /next HTTP/1.1\r\n"  # a pipelined request: not the guard's to scan

ACCEPTED = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n",  # lower and upper case hex
    b"5\r\nhello\r\n6\r\n world\r\n000\r\n\r\n",  # zero-padded last chunk (llhttp)
    # llhttp "Chunk extensions" and "Chunk extensions quoting".
    b"5;ilovew3;somuchlove=aretheseparametersfor\r\nhello\r\n6;blahblah;blah\r\n world\r\n0\r\n\r\n",
    b'5;ilovew3="I love; extensions";somuchlove="aretheseparametersfor";blah;foo=bar\r\n'
    b"hello\r\n0\r\n\r\n",
    b'5;a="q\\"uoted\\\\"\r\nhello\r\n0\r\n\r\n',  # quoted-pairs
    # RFC 9112 §7.1.1 BWS around ";" and "=", except right after the size.
    b'5; a = b ;c\t;\td="e"\r\nhello\r\n0\r\n\r\n',
    b"5\r\nhello\r\n0\r\nVary: *\r\nContent-Type: text/plain\r\n\r\n",  # trailers
    b"0\r\n\r\n",  # an empty body
    b"00000000000000000005\r\nhello\r\n0\r\n\r\n",  # leading zeros are not overflow
]

REFUSED = [
    b"5;\r\nhello\r\n0\r\n\r\n",  # llhttp "No extension after semicolon"
    b'5;ilovew3="abc";somuchlove="def; ghi\r\nhello\r\n0\r\n\r\n',  # unbalanced quote
    b"5 \r\nhello\r\n0\r\n\r\n",  # llhttp "Trailing space on chunked body"
    b"5\t\r\nhello\r\n0\r\n\r\n",
    b"5 ;a\r\nhello\r\n0\r\n\r\n",  # whitespace after the size, before ";" (our choice)
    b"2 erfrferferf\r\naa\r\n0 rrrr\r\n\r\n",  # llhttp "No semicolon before chunk extensions"
    b"5;=b\r\nhello\r\n0\r\n\r\n",  # no extension name
    b"5;a=\r\nhello\r\n0\r\n\r\n",  # no extension value
    b"5;a b\r\nhello\r\n0\r\n\r\n",  # two names, no ";" between them
    b"5;a \r\nhello\r\n0\r\n\r\n",  # BWS not followed by ";" or "="
    b"\r\nhello\r\n0\r\n\r\n",  # no size
    b"x5\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",  # bare LF after the size
    b"5\r\nhello\r\n0\r\nVary: *\n\r\n",  # bare LF in the trailer section
    b"5\r\nhello\r\n0\r\n\n",  # bare LF as the empty line
    b"5\r\nhelloXY0\r\n\r\n",  # data not followed by CRLF
    b"10000000000000000\r\n",  # over 64 bits (llhttp: overflow)
]


def scan(data: bytes, cuts: list[int]) -> int | str:
    """Feed ``data`` cut at ``cuts``: the body's end offset, "refused" or "incomplete"."""
    guard = ChunkGuard()
    start = 0
    try:
        for point in sorted({c for c in cuts if c <= len(data)} | {len(data)}):
            end = guard.feed(data[start:point])
            if end is not None:
                assert guard.done
                return start + end
            start = point
    except ChunkedDecodingError:
        return "refused"
    return "incomplete"


@pytest.mark.parametrize("body", ACCEPTED)
def test_valid_bodies_end_where_they_end_at_every_split(body: bytes) -> None:
    for cut in range(len(body) + len(AFTER) + 1):
        assert scan(body + AFTER, [cut]) == len(body), cut


@pytest.mark.parametrize("body", REFUSED)
def test_invalid_bodies_are_refused_at_every_split(body: bytes) -> None:
    for cut in range(len(body) + 1):
        assert scan(body, [cut]) == "refused", cut


@given(
    body=st.sampled_from(ACCEPTED + REFUSED),
    cuts=st.lists(st.integers(0, 200), max_size=10),
)
def test_same_verdict_however_split(body: bytes, cuts: list[int]) -> None:
    assert scan(body + AFTER, cuts) == scan(body + AFTER, [])


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    cuts=st.lists(st.integers(0, 3000), max_size=10),
)
def test_payload_bytes_are_never_read_as_lines(chunks: list[bytes], cuts: list[int]) -> None:
    """Payloads full of CR, LF and ';' are skipped by count."""
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    assert scan(body + AFTER, cuts) == len(body)


def test_long_lines_are_refused() -> None:
    for line in (
        b"5;" + b"a" * 5000,
        b"5;" + b"a" * 5000 + b"\r\n",
        b"5;" + b"a" * 5000 + b" \r\n",
    ):
        with pytest.raises(ChunkedDecodingError):
            ChunkGuard().feed(line)
    guard = ChunkGuard()
    guard.feed(b"0\r\n")
    with pytest.raises(ChunkedDecodingError):
        for _ in range(20):
            guard.feed(b"X-Trailer: " + b"v" * 1000 + b"\r\n")
