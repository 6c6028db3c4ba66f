"""Request target parsing, headers and query parameters, and the body reader."""

from __future__ import annotations

import asyncio

import pytest

from tinystream import HTTPError, Request
from tinystream.datastructures import Headers, QueryParams
from tinystream.request import BodyReader, parse_target


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", "/", ""),
        (b"/a/b?x=1&y=2", "/a/b", "x=1&y=2"),
        (b"/caf%C3%A9", "/café", ""),
        (b"/a%2Fb", "/a/b", ""),  # decoded: the raw form stays in request.target
        (b"http://example.com/p?q", "/p", "q"),
        (b"https://example.com", "/", ""),
    ],
)
def test_parse_target(target: bytes, path: str, query: str) -> None:
    assert parse_target(b"GET", target) == (path, query)


def test_asterisk_form_for_options() -> None:
    assert parse_target(b"OPTIONS", b"*") == ("*", "")


@pytest.mark.parametrize(
    "target",
    [
        b"/a%zz",
        b"/a%f",
        b"/%ff%fe",
        b"*",
        b"ftp://x/y",
        b"relative",
        b"/\xc3\xa9",
        # RFC 9112 §3.2: a request target never carries a fragment, wherever it is.
        b"/a#frag",
        b"/a#c?b",  # before the query
        b"/a?b=1#c",  # after the query (was served, the "#c" left in the query)
        b"http://x/a?b#c",  # absolute form
    ],
)
def test_bad_targets_are_400(target: bytes) -> None:
    with pytest.raises(HTTPError) as info:
        parse_target(b"GET", target)
    assert info.value.status == 400


def test_headers_are_case_insensitive_and_multi_valued() -> None:
    headers = Headers([(b"Accept", b"text/html"), (b"x-tag", b"a"), (b"X-Tag", b"b")])
    assert headers["ACCEPT"] == "text/html"
    assert headers.get("x-tag") == "a" and headers.get_all("X-TAG") == ["a", "b"]
    assert headers.get("missing") is None and headers.get("missing", "d") == "d"
    assert "x-tag" in headers and len(headers) == 2 and list(headers) == ["accept", "x-tag"]
    with pytest.raises(KeyError):
        headers["missing"]


def test_query_params() -> None:
    params = QueryParams("a=1&b=&a=2&c=%C3%A9+x")
    assert params.get("a") == "1" and params.get_all("a") == ["1", "2"]
    assert params["b"] == "" and params["c"] == "é x" and params.get("zz") is None
    assert list(params) == ["a", "b", "c"] and len(params) == 3


async def test_request_built_by_hand() -> None:
    request = Request("GET", "/x%20y?k=v", headers=Headers([(b"last-event-id", b"42")]))
    assert request.path == "/x y" and request.query_params.get("k") == "v"
    assert request.last_event_id == "42"
    assert await request.body() == b""
    assert not request.is_disconnected() and not request.is_shutting_down()


async def test_body_can_be_read_once_as_a_stream_and_is_cached_by_body() -> None:
    reader = BodyReader()
    request = Request("POST", "/", body=reader)
    reader.feed(b"abc")
    reader.feed(b"def")
    reader.finish()
    assert await request.body() == b"abcdef"
    assert await request.body() == b"abcdef"
    assert [c async for c in request.stream()] == [b"abcdef"]
    streamed = Request("POST", "/", body=BodyReader())
    streamed._body.finish()
    assert [c async for c in streamed.stream()] == []
    with pytest.raises(RuntimeError, match="already been consumed"):
        [c async for c in streamed.stream()]


async def test_json_body_errors_are_400() -> None:
    reader = BodyReader()
    reader.feed(b"{not json")
    reader.finish()
    with pytest.raises(HTTPError) as info:
        await Request("POST", "/", body=reader).json()
    assert info.value.status == 400


async def test_body_reader_reports_unread_bytes_and_first_read() -> None:
    unread_seen: list[int] = []
    first = asyncio.Event()

    class Listener:
        def body_unread(self, unread: int) -> None:
            unread_seen.append(unread)

        def body_first_read(self) -> None:
            first.set()

    reader = BodyReader(Listener())
    reader.feed(b"12345")
    assert unread_seen == [5] and not first.is_set()
    assert await reader.read() == b"12345"
    assert first.is_set() and unread_seen == [5, 0]
    reader.fail(ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        await reader.read()
