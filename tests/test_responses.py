"""Response construction: bad arguments fail early with a message naming the problem."""

from __future__ import annotations

import pytest

from tinystream import HTTPError, JSONResponse, Response, StreamingResponse
from tinystream.config import Config


def test_response_defaults() -> None:
    text = Response("héllo")
    assert (
        text.body == "héllo".encode()
        and (b"content-type", b"text/plain; charset=utf-8") in text.headers
    )
    raw = Response(b"\x00\x01", media_type="application/octet-stream")
    assert (b"content-type", b"application/octet-stream") in raw.headers
    html = Response("<p>", media_type="text/html")
    assert (b"content-type", b"text/html; charset=utf-8") in html.headers


def test_json_response() -> None:
    assert JSONResponse({"a": [1, "é"]}).body == '{"a":[1,"é"]}'.encode()
    with pytest.raises(ValueError):
        JSONResponse(float("nan"))
    with pytest.raises(TypeError):
        JSONResponse(object())


@pytest.mark.parametrize(
    ("headers", "error", "match"),
    [
        ({"X-Bad": "a\r\nInjected: 1"}, ValueError, "control character"),
        # h11 refuses these at send time, after the handler has returned: too late.
        ({"X-Bad": "a\x0cb"}, ValueError, "control character"),
        ({"X-Bad": "a\x7fb"}, ValueError, "control character"),
        ({"Bad Name": "x"}, ValueError, "invalid header name"),
        ({"Content-Length": "5"}, ValueError, "set by the server"),
        ({"Transfer-Encoding": "chunked"}, ValueError, "set by the server"),
        ({"X-Num": 5}, TypeError, "must be str"),
    ],
)
def test_bad_headers_fail_at_construction(
    headers: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Response("x", headers=headers)  # type: ignore[arg-type]


def test_bad_status_and_bodies() -> None:
    with pytest.raises(ValueError, match="status"):
        Response(status=99)
    with pytest.raises(ValueError, match="cannot have a body"):
        Response(b"x", status=204)
    with pytest.raises(TypeError, match="bytes or str"):
        Response(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable of chunks"):
        StreamingResponse(b"bytes are not chunks")
    with pytest.raises(TypeError, match="sync or async iterable"):
        StreamingResponse(42)  # type: ignore[arg-type]


def test_http_error() -> None:
    assert str(HTTPError(404)) == "404 Not Found"
    with pytest.raises(ValueError, match="400 to 599"):
        HTTPError(200)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"keep_alive_timeout": 0}, ValueError),
        ({"header_timeout": -1}, ValueError),
        ({"write_stall_timeout": float("nan")}, TypeError),
        ({"max_head_size": 1.5}, TypeError),
        ({"max_body_size": -1}, ValueError),
        ({"write_low_water": 10**9}, ValueError),
        ({"graceful_timeout": -1}, ValueError),
    ],
)
def test_config_validation(options: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Config(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["a\x0bb", "a\x0cb"])
def test_other_line_breaking_whitespace_is_refused_when_built(value: str) -> None:
    """h11 refuses a vertical tab or form feed in a field value; so does Response,
    when it is built rather than when it is sent."""
    with pytest.raises(ValueError, match="control character"):
        Response("x", headers={"X-Field": value})
