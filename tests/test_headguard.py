"""The head guard: head size, obs-fold and bare LF, however the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinystream._headguard import HeadGuard, HeadRejected

HEAD = b"GET /path HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n"


def feed_split(guard: HeadGuard, data: bytes, cut: int) -> int | None:
    first = guard.feed(data[:cut]) if cut else None
    if first is not None:
        return first
    rest = guard.feed(data[cut:])
    return None if rest is None else cut + rest


def test_finds_the_end_of_the_head_at_every_split() -> None:
    data = HEAD + b"BODY"
    for cut in range(len(data) + 1):
        guard = HeadGuard(1024)
        assert feed_split(guard, data, cut) == len(HEAD), cut
        assert not guard.active


# A bare LF ends a line for h11 but not for a proxy that splits only on CRLF (or
# that refuses it, as llhttp does): wherever it is, the head is refused.
BARE_LF = [
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",  # after the request line
    b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",  # after a field line
    # The smuggling shape: one field to a CRLF-only parser, two to h11.
    b"POST / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 23\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\n",  # the empty line that ends the head
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",  # the last field line
    b"GET / HTTP/1.1\nHost: a\n\nrest",  # every line
    b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # the head's first byte
]


@pytest.mark.parametrize("data", BARE_LF)
def test_bare_lf_is_refused_at_every_split(data: bytes) -> None:
    for cut in range(len(data) + 1):
        with pytest.raises(HeadRejected) as info:
            feed_split(HeadGuard(1024), data, cut)
        assert info.value.status == 400, cut


def scan(guard: HeadGuard, data: bytes, cuts: list[int]) -> int | str:
    """Feed ``data`` cut at ``cuts``: "end" when the head ended, else the refusal status."""
    start = 0
    try:
        for point in sorted({c for c in cuts if c <= len(data)} | {len(data)}):
            if guard.feed(data[start:point]) is not None:
                return "end"
            start = point
    except HeadRejected as exc:
        return exc.status
    return "incomplete"


@given(
    fields=st.lists(st.text("abcxyz: ", max_size=12).map(lambda t: "x" + t), max_size=6),
    which=st.integers(0, 100),
    cuts=st.lists(st.integers(0, 120), max_size=6),
)
def test_one_bare_lf_anywhere_is_refused_however_split(
    fields: list[str], which: int, cuts: list[int]
) -> None:
    strict = ("GET / HTTP/1.1\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode()
    assert scan(HeadGuard(1024), strict, cuts) == "end"
    # The same head with one of its line ends (the empty line's too) made a bare LF.
    ends = [i for i in range(len(strict)) if strict.startswith(b"\r\n", i)]
    at = ends[which % len(ends)]
    bare = strict[:at] + strict[at + 1 :]
    assert scan(HeadGuard(1024), bare, cuts) == 400, (bare, cuts)


@pytest.mark.parametrize("fold", [b"\r\n continued", b"\r\n\tcontinued", b"\n continued"])
def test_obs_fold_is_refused_at_every_split(fold: bytes) -> None:
    data = b"GET / HTTP/1.1\r\nX-A: one" + fold + b"\r\nHost: a\r\n\r\n"
    for cut in range(len(data) + 1):
        with pytest.raises(HeadRejected) as info:
            feed_split(HeadGuard(1024), data, cut)
        assert info.value.status == 400


def test_body_after_the_head_is_not_scanned() -> None:
    """A body line starting with a space is payload, not folding."""
    data = HEAD + b"\r\n continued-in-body"
    assert HeadGuard(1024).feed(data) == len(HEAD)


def test_oversized_head_in_one_read_is_refused() -> None:
    """h11 only bounds an incomplete head; one read holding it all must fail too."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    with pytest.raises(HeadRejected) as info:
        HeadGuard(16 * 1024).feed(head)
    assert info.value.status == 431


@given(
    size=st.integers(min_value=1, max_value=3000), cuts=st.lists(st.integers(0, 3100), max_size=6)
)
def test_size_limit_is_exact_however_split(size: int, cuts: list[int]) -> None:
    head = b"GET / HTTP/1.1\r\nX: " + b"v" * size + b"\r\n\r\n"
    limit = 1500
    guard = HeadGuard(limit)
    points = sorted({c for c in cuts if c <= len(head)} | {len(head)})
    start = 0
    try:
        end = None
        for point in points:
            result = guard.feed(head[start:point])
            if result is not None:
                end = start + result
                break
            start = point
    except HeadRejected as exc:
        assert exc.status == 431
        assert len(head) > limit
    else:
        assert end == len(head)
        assert len(head) <= limit


@pytest.mark.parametrize(
    ("data", "empty"),
    [
        (HEAD, 0),  # the common case: nothing to skip
        (b"\r\n" + HEAD, 2),
        (b"\n\r\n\n" + HEAD, 4),  # CRLF and bare LF mixed
    ],
)
def test_empty_lines_before_the_request_line_are_skipped_at_every_split(
    data: bytes, empty: int
) -> None:
    for cut in range(empty + 2):
        guard = HeadGuard(1024)
        first = guard.skip_empty_lines(data[:cut]) if cut else 0
        skipped = first + (guard.skip_empty_lines(data[cut:]) if first == cut else 0)
        assert skipped == empty, cut


@pytest.mark.parametrize("data", [b"\rGET", b"\r\r\n", b"\n\rX"])
def test_a_cr_without_lf_before_the_request_line_is_refused(data: bytes) -> None:
    for cut in range(1, len(data)):
        guard = HeadGuard(1024)
        with pytest.raises(HeadRejected) as info:
            if guard.skip_empty_lines(data[:cut]) == cut:
                guard.skip_empty_lines(data[cut:])
        assert info.value.status == 400, cut


def test_empty_lines_count_against_the_head_limit() -> None:
    guard = HeadGuard(100)
    assert guard.skip_empty_lines(b"\r\n" * 50) == 100
    with pytest.raises(HeadRejected):
        guard.skip_empty_lines(b"\r\n")
