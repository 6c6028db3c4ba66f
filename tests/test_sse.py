"""The event-stream format: encoding, validation, and the WHATWG decoder at any split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinystream.sse import (
    PING,
    EventStreamDecoder,
    EventStreamError,
    ServerSentEvent,
    encode_data,
)


def decode_all(
    data: bytes, cuts: list[int] = ()
) -> tuple[list[ServerSentEvent], EventStreamDecoder]:  # type: ignore[assignment]
    decoder = EventStreamDecoder()
    events = []
    start = 0
    for cut in [*sorted({c for c in cuts if c <= len(data)}), len(data)]:
        events += decoder.feed(data[start:cut])
        start = cut
    return events, decoder


def test_common_event_encoding() -> None:
    assert ServerSentEvent("hello").encode() == b"data: hello\n\n"
    assert encode_data("hello") == b"data: hello\n\n"
    assert ServerSentEvent(data="x", event="update", id="42").encode() == (
        b"event: update\nid: 42\ndata: x\n\n"
    )
    assert ServerSentEvent(retry=3000).encode() == b"retry: 3000\n\n"
    assert ServerSentEvent(comment="a\nb").encode() == b": a\n: b\n\n"


@pytest.mark.parametrize("data", ["a\nb", "a\r\nb", "a\rb"])
def test_multi_line_data_becomes_several_data_lines(data: str) -> None:
    assert ServerSentEvent(data).encode() == b"data: a\ndata: b\n\n"
    assert encode_data(data) == b"data: a\ndata: b\n\n"


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"event": "a\nb"}, ValueError, "event must not contain CR or LF"),
        ({"event": "a\rb"}, ValueError, "event must not contain CR or LF"),
        ({"id": "1\ndata: injected"}, ValueError, "id must not contain CR or LF"),
        ({"id": "1\x00"}, ValueError, "id must not contain NUL"),
        ({"retry": -1}, ValueError, "retry must be >= 0"),
        ({"retry": 1.5}, TypeError, "retry must be an int"),
        ({"retry": True}, TypeError, "retry must be an int"),
        ({"data": b"bytes"}, TypeError, "data must be a str"),
        ({"event": 5}, TypeError, "event must be a str"),
    ],
)
def test_fields_that_could_inject_are_refused(
    fields: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        ServerSentEvent(**fields)  # type: ignore[arg-type]


def test_from_dict_names_unknown_keys() -> None:
    assert ServerSentEvent.from_dict({"data": "x", "id": "1"}) == ServerSentEvent("x", id="1")
    with pytest.raises(TypeError, match="unknown ServerSentEvent field"):
        ServerSentEvent.from_dict({"date": "typo"})


# The decoder, against the WHATWG parsing rules.


def test_decoder_field_rules() -> None:
    stream = (
        b"\xef\xbb\xbf"  # a leading BOM is dropped
        b": a comment\n"
        b"data:no space\n"
        b"data:  two spaces\n"
        b"unknown: ignored\n"
        b"\n"
        b"event: named\n"
        b"data\n"  # a field without a colon has an empty value
        b"\n"
        b"id: bad\x00id\n"  # ignored: contains NUL
        b"retry: 12x\n"  # ignored: not all digits
        b"data: after\n"
        b"\n"
    )
    events, decoder = decode_all(stream)
    assert [(e.event, e.data, e.id) for e in events] == [
        (None, "no space\n two spaces", None),
        ("named", "", None),
        (None, "after", None),
    ]
    assert decoder.retry is None and decoder.last_event_id == ""


def test_line_endings_crlf_cr_lf_at_every_split() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\nid: 9\r\rdata: d\n\n"
    expected = [ServerSentEvent("a\nb\nc"), ServerSentEvent("d")]
    for cut in range(len(stream) + 1):
        events, decoder = decode_all(stream, [cut])
        assert [e.data for e in events] == [x.data for x in expected], cut
        assert decoder.last_event_id == "9"


def test_utf8_character_split_across_pieces() -> None:
    stream = "data: é€😀\n\n".encode()
    for cut in range(len(stream) + 1):
        events, _ = decode_all(stream, [cut])
        assert [e.data for e in events] == ["é€😀"], cut


def test_event_without_data_is_not_dispatched_but_its_id_counts() -> None:
    events, decoder = decode_all(b"id: 5\n\n")
    assert events == [] and decoder.last_event_id == "5"


def test_unterminated_last_event_is_discarded() -> None:
    events, decoder = decode_all(b"data: complete\n\nid: 7\ndata: cut off")
    assert [e.data for e in events] == ["complete"] and decoder.last_event_id == ""


def test_retry_sets_the_reconnection_time() -> None:
    events, decoder = decode_all(b"retry: 2500\ndata: x\n\n")
    assert decoder.retry == 2500 and events[0].retry == 2500


def test_no_64k_line_limit_but_a_bounded_event() -> None:
    big = "x" * (1 << 20)
    events, _ = decode_all(ServerSentEvent(big).encode(), list(range(0, 1 << 20, 65536)))
    assert events[0].data == big
    decoder = EventStreamDecoder(max_event_size=1000)
    with pytest.raises(EventStreamError, match="max_event_size"):
        decoder.feed(b"data: " + b"y" * 600 + b"\ndata: " + b"y" * 600 + b"\n")
    with pytest.raises(EventStreamError, match="max_event_size"):
        EventStreamDecoder(max_event_size=1000).feed(b"data: " + b"z" * 2000)  # one unended line


def test_ping_is_a_comment() -> None:
    events, _ = decode_all(PING + b"data: x\n\n" + PING)
    assert [e.data for e in events] == ["x"]


# Round trip: whatever the fields and wherever the bytes are cut.

single_line = st.text().filter(lambda t: "\r" not in t and "\n" not in t)
events_strategy = st.builds(
    ServerSentEvent,
    data=st.text(),
    event=st.none() | single_line.filter(lambda t: t != ""),
    id=st.none() | single_line.filter(lambda t: "\0" not in t),
    retry=st.none() | st.integers(min_value=0, max_value=10**9),
)


def normalise(data: str) -> str:
    return data.replace("\r\n", "\n").replace("\r", "\n")


@given(
    events=st.lists(events_strategy, min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_decode_encode_round_trip_at_any_boundaries(
    events: list[ServerSentEvent], cuts: list[int]
) -> None:
    """decode(encode(x)) == x: event and id exactly, data up to line-ending normalisation."""
    wire = b"".join(e.encode() for e in events)
    decoded, decoder = decode_all(wire, cuts)
    assert len(decoded) == len(events)
    for got, sent in zip(decoded, events, strict=True):
        assert got.data == normalise(sent.data or "")
        assert got.event == sent.event
        assert got.id == sent.id
        assert got.retry == sent.retry
    ids = [e.id for e in events if e.id is not None]
    assert decoder.last_event_id == (ids[-1] if ids else "")


@given(text=st.text(), event=single_line)
def test_no_field_value_can_inject_an_event(text: str, event: str) -> None:
    """Whatever a user puts in data or an event name, one event comes out."""
    decoded, _ = decode_all(ServerSentEvent(data=text, event=event or None).encode())
    assert len(decoded) == 1 and decoded[0].data == normalise(text)


def test_a_shared_event_is_encoded_once_and_cannot_change() -> None:
    """A broadcast event goes to every subscriber as one object and one bytes:
    it encodes like a ServerSentEvent, and refuses to change after it is built
    (a change would reach every subscriber, and could bypass the field checks)."""
    from tinystream.sse import SharedEvent

    shared = SharedEvent(data="a\nb", event="message", id="7")
    plain = ServerSentEvent(data="a\nb", event="message", id="7")
    assert shared.encode() == plain.encode() and shared.encode() is shared.encode()
    assert shared == plain
    with pytest.raises(AttributeError):
        shared.id = "8\ndata: injected"
    with pytest.raises(ValueError):
        SharedEvent(event="bad\nname")


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "1\ndata: injected"), ("event", "a\rdata: x"), ("id", "a\0b"), ("retry", "1\ndata: x")],
)
def test_a_field_changed_after_construction_cannot_inject(field: str, value: str) -> None:
    """The constructor's rules hold at encode() too: fields can be reassigned."""
    event = ServerSentEvent("safe", id="1")
    setattr(event, field, value)
    with pytest.raises((ValueError, TypeError)):
        event.encode()
