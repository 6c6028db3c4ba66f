"""The head guard: head size and obs-fold, however the bytes are split."""

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


def test_bare_lf_heads() -> None:
    data = b"GET / HTTP/1.1\nHost: a\n\nrest"
    assert HeadGuard(1024).feed(data) == data.index(b"rest")


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
