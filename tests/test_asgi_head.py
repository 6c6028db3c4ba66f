"""The check of an ASGI ``http.response.start``: every field the app sends, once and
again (the second time a field may come from the check's memory of valid fields)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinystream._asgi_errors import ASGIProtocolError
from tinystream._asgi_head import Head, parse_start
from tinystream.responses import FIELD_NAME, FIELD_VALUE_CONTROL

names = st.sampled_from(
    [b"content-type", b"Content-Type", b"x-a", b"X-B", b"content-length", b"Content-Length",
     b"transfer-encoding", b"connection", b"bad name", b"x\r\ny", b""]
)  # fmt: skip
values = st.sampled_from(
    [b"text/plain", b"text/event-stream", b"  padded ", b"12", b"0", b"1x", b"chunked",
     b"gzip", b"close", b"a\r\nb", b"a\x00b", b"tab\there", b""]
)  # fmt: skip
shapes = st.sampled_from(["tuple", "list", "bytearray"])


def shaped(name: bytes, value: bytes, shape: str) -> Any:
    if shape == "list":
        return [name, value]
    if shape == "bytearray":
        return (bytearray(name), value)
    return (name, value)


def outcome(message: dict[str, Any]) -> Any:
    try:
        head = parse_start(message)
    except (ASGIProtocolError, TypeError) as exc:
        return type(exc)
    return (head.status, head.headers, head.content_length, head.event_stream)


@given(
    status=st.sampled_from([200, 204, 304, 404, 199, 600, True]),
    fields=st.lists(st.tuples(names, values, shapes), max_size=5),
)
def test_a_start_is_judged_the_same_every_time(
    status: int, fields: list[tuple[bytes, bytes, str]]
) -> None:
    message = {
        "type": "http.response.start",
        "status": status,
        "headers": [shaped(name, value, shape) for name, value, shape in fields],
    }
    first = outcome(message)
    assert outcome(message) == first == outcome(message)
    if isinstance(first, type):
        return
    status, headers, content_length, event_stream = first
    for name, value in headers:
        # What goes on: a lower-case token name, a value without controls or
        # surrounding whitespace, never a framing field of the app's.
        assert type(name) is bytes and type(value) is bytes
        assert FIELD_NAME.fullmatch(name) and name == name.lower()
        assert not FIELD_VALUE_CONTROL.search(value) and value == value.strip(b" \t")
        assert name != b"transfer-encoding"
        assert name != b"content-length" or status == 304
    lengths = {int(v.strip()) for n, v, _ in fields if n.lower() == b"content-length"}
    assert content_length == (None if status == 204 or not lengths else lengths.pop())
    assert event_stream == any(
        n.lower() == b"content-type" and v.startswith(b"text/event-stream") for n, v, _ in fields
    )


def test_an_intenum_status_is_taken_and_a_bool_is_not() -> None:
    head = parse_start({"type": "http.response.start", "status": HTTPStatus.CREATED})
    assert isinstance(head, Head) and head.status == 201 and type(head.status) is int
    with pytest.raises(ASGIProtocolError):
        parse_start({"type": "http.response.start", "status": True})


def test_contradictory_lengths_are_refused_even_when_each_was_seen_before() -> None:
    parse_start(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    parse_start(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"6")]}
    )
    with pytest.raises(ASGIProtocolError, match="Content-Length"):
        parse_start(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"5"), (b"content-length", b"6")],
            }
        )
