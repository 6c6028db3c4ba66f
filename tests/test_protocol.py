"""HTTPConnection driven through a fake transport: parsing, framing, refusals, pipelining."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinystream import Request, Response, StreamingResponse
from tinystream.chunked import ChunkedDecoder
from tinystream.server import LINGER_MAX_BYTES, ConnState

from .helpers import POST_CHUNKED, POST_CL, SIMPLE_GET, make_connection, parse_responses, settle


def feed(data: bytes, cuts: list[int], handler: Any, **options: Any) -> bytes:
    """Feed ``data`` split at ``cuts`` to a fresh connection; return all it wrote."""

    async def scenario() -> bytes:
        protocol, transport = make_connection(handler, **options)
        start = 0
        for cut in [*sorted(set(cuts)), len(data)]:
            if cut > start and not transport.closed:
                protocol.data_received(data[start:cut])
                await asyncio.sleep(0)  # let an exchange started by this piece run a step
            start = max(start, cut)
        await settle(protocol)
        return bytes(transport.written)

    return asyncio.run(scenario())


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(
        body,
        headers={
            "x-method": request.method,
            "x-target": request.target,
            "x-path": request.path,
            "x-headers": repr(request.headers.items_all()),
        },
    )


# Property 1: any body, produced as any chunks, read back at any boundaries.

chunk_lists = st.lists(st.binary(min_size=0, max_size=200), max_size=15)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=chunk_lists, cuts=st.lists(st.integers(0, 4000), max_size=10))
def test_streamed_body_survives_any_socket_boundaries(chunks: list[bytes], cuts: list[int]) -> None:
    async def produce() -> Any:
        for chunk in chunks:
            yield chunk

    def handler(_request: Request) -> StreamingResponse:
        return StreamingResponse(produce())

    wire = feed(SIMPLE_GET, [], handler)
    head_end = wire.index(b"\r\n\r\n") + 4
    body_wire = wire[head_end:]
    # Our decoder, fed at arbitrary boundaries (inside size lines and CRLFs too).
    decoder = ChunkedDecoder()
    out = []
    start = 0
    for cut in [*sorted({c for c in cuts if c <= len(body_wire)}), len(body_wire)]:
        out.append(decoder.feed(body_wire[start:cut]))
        start = cut
    assert b"".join(out) == b"".join(chunks)
    # Ended exactly at the end: an early zero-length chunk would leave bytes unused.
    assert decoder.done and decoder.unused == b""
    # h11 as the client.
    [response] = parse_responses(wire)
    assert response["complete"] and response["body"] == b"".join(chunks)


def without_date(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Two runs may straddle a second boundary; Date is the one field allowed to differ.
    for response in responses:
        response["headers"].pop(b"date", None)
        response["raw_headers"] = [f for f in response["raw_headers"] if f[0] != b"date"]
    return responses


# Property 2: any valid request, split anywhere, is the same request.

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
requests = st.builds(
    lambda method, path, fields, body, chunked: (method, path, fields, body, chunked),
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    st.text(alphabet="abcxyz019/_.~", max_size=20).map(lambda p: "/" + p),
    st.lists(
        st.tuples(
            token.filter(
                lambda t: (
                    t not in ("host", "content-length", "transfer-encoding", "expect", "connection")
                )
            ),
            value,
        ),
        max_size=6,
    ),
    st.binary(max_size=300),
    st.booleans(),
)


def encode_request(
    method: str, path: str, fields: list[tuple[str, str]], body: bytes, chunked: bool
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: example"]
    lines += [f"{name}: {val}" for name, val in fields]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        framed = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + framed


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, cuts=st.lists(st.integers(0, 600), max_size=8))
def test_request_survives_any_split(request: tuple[Any, ...], cuts: list[int]) -> None:
    method, path, fields, body, chunked = request
    data = encode_request(method, path, fields, body, chunked)
    whole = without_date(parse_responses(feed(data, [], echo), [method.encode()]))
    split = without_date(parse_responses(feed(data, cuts, echo), [method.encode()]))
    assert whole == split
    [response] = whole
    assert response["status"] == 200 and response["body"] == body
    assert response["headers"][b"x-method"] == method.encode()
    assert response["headers"][b"x-path"] == path.encode()
    for name, val in fields:
        assert repr((name, val.strip()))[1:-1].encode() in response["headers"][b"x-headers"]


# Property 3: pipelined requests, split anywhere, are answered in order.


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(requests, min_size=2, max_size=4),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_pipelined_requests_answered_in_order(
    batch: list[tuple[Any, ...]], cuts: list[int]
) -> None:
    data = b"".join(encode_request(*r) for r in batch)
    responses = parse_responses(feed(data, cuts, echo), [r[0].encode() for r in batch])
    assert [r["body"] for r in responses] == [r[3] for r in batch]
    assert [r["headers"][b"x-path"] for r in responses] == [r[1].encode() for r in batch]


def strip_date(wire: bytes) -> bytes:
    return b"".join(line for line in wire.split(b"\r\n") if not line.startswith(b"date:"))


def test_every_split_point_of_fixtures_gives_identical_responses() -> None:
    """The exhaustive complement to the properties: every cut of a few fixtures."""
    for fixture in (SIMPLE_GET, POST_CL, POST_CHUNKED, SIMPLE_GET + POST_CHUNKED):
        expected = feed(fixture, [], echo)
        for cut in range(len(fixture) + 1):
            assert strip_date(feed(fixture, [cut], echo)) == strip_date(expected), (fixture, cut)


# Hostile and malformed input: refused with the fitting status, connection closed.

CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
REFUSED = {
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "two different content-lengths": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "malformed chunk size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400),
    # Chunk-size lines h11 serves and llhttp refuses (RFC 9112 §7.1.1).
    "nothing after ';' in a chunk-size line": (CHUNKED_HEAD + b"5;\r\nhello\r\n0\r\n\r\n", 400),
    "unclosed quoted string in a chunk extension": (
        CHUNKED_HEAD + b'5;a="b\r\nhello\r\n0\r\n\r\n',
        400,
    ),
    "whitespace after the chunk size": (CHUNKED_HEAD + b"5 \r\nhello\r\n0\r\n\r\n", 400),
    # A bare LF ends a field line for h11, not for a proxy that splits on CRLF only:
    # Content-Length would be smuggled past it (llhttp refuses this too).
    "bare LF between field lines": (
        b"POST / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "bare LF after the request line": (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    "bare LF line ends throughout": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    "head over the limit in one read": (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        431,
    ),
    "http/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "http/2.0 version": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "invalid percent-encoding": (b"GET /a%zzb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    # RFC 9112 §3.2: no fragment in a request target, after the query as before it.
    "fragment after the query": (b"GET /a?b=1#c HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "fragment before the query": (b"GET /a#c?b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "percent-encoding of invalid utf-8": (b"GET /a%ff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "missing host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "unsupported transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    "declared body over the limit": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n",
        413,
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_input_is_refused_and_never_served(name: str) -> None:
    data, status = REFUSED[name]
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return Response("served")

    async def scenario() -> None:
        protocol, transport = make_connection(handler, max_body_size=1000)
        protocol.data_received(data)
        await settle(protocol)
        [response] = parse_responses(bytes(transport.written))
        assert response["status"] == status
        assert response["headers"][b"connection"] == b"close"
        assert transport.eof_written  # lingering close: our side shut, reading on
        assert not seen, "a refused request reached the handler"

    asyncio.run(scenario())


def test_lingering_close_drops_up_to_its_byte_budget_then_resets() -> None:
    """After a refusal the client's bytes are dropped up to LINGER_MAX_BYTES, then reset."""

    async def scenario() -> None:
        protocol, transport = make_connection(echo, max_body_size=1000)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999\r\n\r\n")
        assert parse_responses(bytes(transport.written))[0]["status"] == 413
        piece = b"x" * 4096
        for _ in range(LINGER_MAX_BYTES // len(piece)):
            protocol.data_received(piece)
        assert transport.eof_written and not transport.closed  # exactly the budget: lingering
        protocol.data_received(b"x")
        assert transport.aborted  # one byte over: reset, not 2 s more of reading
        await settle(protocol)

    asyncio.run(scenario())


def test_head_limit_holds_for_a_trickled_head() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    wire = feed(head, list(range(0, len(head), 100)), echo)
    assert parse_responses(wire)[0]["status"] == 431


def test_body_over_the_limit_while_streaming_in() -> None:
    """A chunked body that grows past max_body_size makes body() raise 413."""
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"400\r\n"
        + b"x" * 1024
        + b"\r\n"
    )
    wire = feed(data * 1, [], echo, max_body_size=1000)
    [response] = parse_responses(wire)
    assert response["status"] == 413


def test_pipelined_bytes_pause_reading_past_the_buffer_limit() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(request: Request) -> Response:
            await release.wait()
            return Response("ok")

        protocol, transport = make_connection(slow, max_pipeline_buffer=100)
        protocol.data_received(SIMPLE_GET)
        await asyncio.sleep(0)
        protocol.data_received(SIMPLE_GET * 2)
        assert transport.reading  # 68 bytes waiting: under the limit
        protocol.data_received(SIMPLE_GET * 2)
        assert not transport.reading  # 136 bytes: paused until this request ends
        release.set()
        await settle(protocol)
        assert transport.reading
        assert [r["status"] for r in parse_responses(bytes(transport.written))] == [200] * 5

    asyncio.run(scenario())


def test_unread_body_pauses_reading_until_the_handler_reads() -> None:
    async def scenario() -> None:
        start_reading = asyncio.Event()

        async def lazy(request: Request) -> Response:
            await start_reading.wait()
            return Response(b"%d" % len(await request.body()))

        protocol, transport = make_connection(lazy, read_high_water=1000)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        protocol.data_received(b"x" * 900)
        assert transport.reading
        protocol.data_received(b"x" * 900)
        assert not transport.reading  # 1800 unread > 1000
        start_reading.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert transport.reading  # the handler took it all
        protocol.data_received(b"x" * 3200)
        await settle(protocol)
        assert parse_responses(bytes(transport.written))[0]["body"] == b"5000"

    asyncio.run(scenario())


def test_100_continue_waits_for_the_handler_to_read() -> None:
    async def scenario() -> None:
        go = asyncio.Event()
        entered = asyncio.Event()

        async def handler(request: Request) -> Response:
            entered.set()
            await go.wait()
            return Response(await request.body())

        protocol, transport = make_connection(handler)
        protocol.data_received(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        await asyncio.wait_for(entered.wait(), 5)
        assert transport.written == b""  # not before the handler asks for the body
        go.set()
        await asyncio.sleep(0)
        assert transport.written == b"HTTP/1.1 100 \r\n\r\n"
        protocol.data_received(b"ok")
        await settle(protocol)
        assert transport.written.endswith(b"\r\n\r\nok")

    asyncio.run(scenario())


def test_producer_is_closed_even_if_the_client_left_before_it_started() -> None:
    async def scenario() -> None:
        closed = asyncio.Event()

        class Producer:
            def __aiter__(self) -> Producer:
                return self

            async def __anext__(self) -> bytes:
                raise AssertionError("never pulled: the client is gone")

            async def aclose(self) -> None:
                closed.set()

        async def handler(request: Request) -> StreamingResponse:
            transport.close()  # the client vanishes while the handler works
            return StreamingResponse(Producer())

        protocol, transport = make_connection(handler)
        protocol.data_received(SIMPLE_GET)
        await settle(protocol)
        assert closed.is_set()

    asyncio.run(scenario())


def test_a_protocol_error_mid_body_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """The refused request is logged once, with its method and target."""
    caplog.set_level(logging.INFO, logger="tinystream.access")

    async def scenario() -> None:
        async def reader(request: Request) -> Response:
            return Response(await request.body())

        protocol, transport = make_connection(reader)
        protocol.data_received(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await asyncio.sleep(0)
        protocol.data_received(b"zz\r\n")  # not a chunk size
        await settle(protocol)
        assert parse_responses(bytes(transport.written))[0]["status"] == 400

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "tinystream.access"]
    assert len(lines) == 1 and '"POST /upload HTTP/1.1" 400' in lines[0]


# Issue 11: h11 quotes offending bytes as Python reprs; the client reads plain text.
REPR_ERRORS = {
    # h11: "illegal header line: bytearray(b'Bad Header')"
    "header line without a colon": (
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"illegal header line: 'Bad Header'",
    ),
    # h11: "illegal request line: bytearray(b'GET /\\x7f HTTP/1.1')"
    "control byte in the target": (b"GET /\x7f HTTP/1.1\r\n\r\n", b"illegal request line"),
    # h11: "illegal header line: bytearray(b'X: a\\x00b')"
    "NUL in a field value": (
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        b"illegal header line: 'X: a\\x00b'",
    ),
}


@pytest.mark.parametrize("name", sorted(REPR_ERRORS))
def test_error_reason_shows_no_python_repr(name: str) -> None:
    data, reason = REPR_ERRORS[name]
    [response] = parse_responses(feed(data, [], echo))
    assert response["status"] == 400
    assert reason in response["body"]
    assert b"bytearray" not in response["body"]
    assert not re.search(rb"\bb['\"]", response["body"])  # no bytes repr either


def test_long_error_reason_is_cut_short() -> None:
    """h11 quotes the whole offending line: the body does not echo 8 KiB back."""
    wire = feed(b"GET / HTTP/1.1\r\nHost: a\r\nBad" + b"x" * 8000 + b"\r\n\r\n", [], echo)
    [response] = parse_responses(wire)
    assert response["status"] == 400 and len(response["body"]) < 300


# RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request
# line. h11 refuses it (400); llhttp and uvicorn serve the request.
EMPTY_LINES_SERVED = {
    "CRLF before the request line": (b"\r\n" + SIMPLE_GET, 1),
    "bare LF before the request line": (b"\n" + SIMPLE_GET, 1),
    "several empty lines": (b"\r\n\n\r\n\r\n" + SIMPLE_GET, 1),
    # Older clients send a CRLF after a POST body; the next request must not pay for it.
    "stray CRLF after a POST body, then a pipelined request": (POST_CL + b"\r\n" + SIMPLE_GET, 2),
    "empty lines between pipelined requests": (SIMPLE_GET + b"\r\n\r\n" + SIMPLE_GET, 2),
    "stray CRLF after a chunked body": (POST_CHUNKED + b"\r\n" + SIMPLE_GET, 2),
}


@pytest.mark.parametrize("name", sorted(EMPTY_LINES_SERVED))
def test_empty_lines_before_a_request_line_are_ignored_at_every_split(name: str) -> None:
    data, count = EMPTY_LINES_SERVED[name]
    expected = feed(data, [], echo)
    assert [r["status"] for r in parse_responses(expected)] == [200] * count
    for cut in range(len(data) + 1):
        assert strip_date(feed(data, [cut], echo)) == strip_date(expected), cut


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(st.sampled_from([b"\r\n", b"\n"]), max_size=5),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)
def test_empty_lines_give_the_same_verdict_however_split(
    before: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(before) + POST_CL + b"".join(before) + SIMPLE_GET
    responses = parse_responses(feed(data, cuts, echo))
    assert [r["status"] for r in responses] == [200, 200]
    assert responses[0]["body"] == b"hello"


EMPTY_LINES_REFUSED = {
    # A CR is only half of an empty line: not one to ignore.
    "CR without LF before the request line": b"\r" + SIMPLE_GET,
    "CR CR LF before the request line": b"\r\r\n" + SIMPLE_GET,
    # Counted against the head limit: a stream of CRLFs is not a free ride.
    "more empty lines than the head limit": b"\r\n" * 600 + SIMPLE_GET,
}


@pytest.mark.parametrize("name", sorted(EMPTY_LINES_REFUSED))
def test_bad_or_endless_empty_lines_are_refused(name: str) -> None:
    data = EMPTY_LINES_REFUSED[name]
    for cuts in ([], [1], [2], list(range(0, len(data), 7))):
        wire = feed(data, cuts, echo, max_head_size=1024)
        [response] = parse_responses(wire)
        assert response["status"] == 400, cuts
        assert response["headers"][b"connection"] == b"close"


def test_empty_lines_leave_the_connection_waiting() -> None:
    """Empty lines start no header deadline: the idle deadline still runs (no 408)."""

    async def scenario() -> None:
        protocol, transport = make_connection(echo)
        idle = protocol._deadline
        protocol.data_received(b"\r\n\r\n")
        assert protocol.state is ConnState.WAITING and protocol._deadline is idle
        protocol.data_received(SIMPLE_GET)
        await settle(protocol)
        assert [r["status"] for r in parse_responses(bytes(transport.written))] == [200]

    asyncio.run(scenario())


# A request that ends the connection (HTTP/1.0, "Connection: close"), then more bytes.
# h11 raises "Got data when expecting EOF" from next_event(); RFC 9112 §9.6 says to
# process no further request: serve this one, drop the rest, close (as uvicorn does).
POST_CLOSE = b"POST /p HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
CLOSE_THEN_MORE = {
    "HTTP/1.0 then a stray CRLF": b"GET /old HTTP/1.0\r\n\r\n\r\n",
    "Connection: close, a body, then a stray CRLF": POST_CLOSE + b"\r\n",
    "Connection: close then a whole request": POST_CLOSE + SIMPLE_GET,
    "HTTP/1.0 then garbage": b"GET /old HTTP/1.0\r\n\r\n\x00\xff garbage",
}


class Recording:
    """A handler that echoes the body and records the targets it was given."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    async def __call__(self, request: Request) -> Response:
        self.targets.append(request.target)
        return Response(await request.body())


async def feed_in_two(data: bytes, cut: int, handler: Recording) -> tuple[bytes, bool]:
    """Feed ``data`` as two reads split at ``cut``; what was written, and whether it closed."""
    protocol, transport = make_connection(handler)
    for piece in (data[:cut], data[cut:]):
        if piece and not transport.closed:
            protocol.data_received(piece)
            await asyncio.sleep(0)
    await settle(protocol)
    return bytes(transport.written), transport.closed


@pytest.mark.parametrize("name", sorted(CLOSE_THEN_MORE))
def test_request_that_closes_is_served_and_what_follows_dropped(name: str) -> None:
    data = CLOSE_THEN_MORE[name]
    for cut in range(len(data) + 1):
        handler = Recording()
        wire, closed = asyncio.run(feed_in_two(data, cut, handler))
        assert [r["status"] for r in parse_responses(wire)] == [200], cut
        assert len(handler.targets) == 1 and closed, cut


def test_bytes_after_a_closing_request_are_dropped_while_it_is_answered() -> None:
    """Bytes that arrive while the handler runs neither refuse nor cut its response."""

    async def scenario() -> None:
        go = asyncio.Event()

        async def handler(request: Request) -> Response:
            await go.wait()
            return Response(await request.body())

        # half_close: a FIN here says "done sending", not "gone" (the default).
        protocol, transport = make_connection(handler, half_close=True)
        protocol.data_received(POST_CLOSE)
        await asyncio.sleep(0)
        protocol.data_received(b"\r\n" + SIMPLE_GET * 100)
        assert protocol.eof_received()  # the client is done sending: keep answering
        go.set()
        await settle(protocol)
        [response] = parse_responses(bytes(transport.written))
        assert response["status"] == 200 and response["body"] == b"hello"
        assert response["headers"][b"connection"] == b"close" and transport.closed

    asyncio.run(scenario())


# The same chunked body, split anywhere, gets the same verdict (llhttp's cases).
CHUNK_LINES = {
    "extensions (llhttp)": (
        b"5;ilovew3;somuchlove=aretheseparametersfor\r\nhello\r\n0\r\n\r\n",
        200,
    ),
    "quoted ';' in an extension (llhttp)": (
        b'5;a="I love; extensions";b\r\nhello\r\n0\r\n\r\n',
        200,
    ),
    "BWS around ';' and '=' past the size (RFC 9112)": (b"5; a = b ;c\r\nhello\r\n0\r\n\r\n", 200),
    "trailer fields": (b"5\r\nhello\r\n0\r\nVary: *\r\n\r\n", 200),
    "nothing after ';' (llhttp)": (b"5;\r\nhello\r\n0\r\n\r\n", 400),
    "unbalanced quote (llhttp)": (b'5;a="abc";b="def; ghi\r\nhello\r\n0\r\n\r\n', 400),
    "trailing space after the size (llhttp)": (b"5  \r\nhello\r\n0\r\n\r\n", 400),
    "no ';' before an extension (llhttp)": (b"5 erfrferferf\r\nhello\r\n0 rrrr\r\n\r\n", 400),
    "bare LF in a trailer": (b"5\r\nhello\r\n0\r\nVary: *\n\r\n", 400),
}


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CHUNK_LINES)), cuts=st.lists(st.integers(0, 150), max_size=6))
def test_chunk_size_lines_get_the_same_verdict_however_split(name: str, cuts: list[int]) -> None:
    body, status = CHUNK_LINES[name]
    data = CHUNKED_HEAD + body + SIMPLE_GET
    statuses = [r["status"] for r in parse_responses(feed(data, cuts, echo))]
    if status == 200:
        assert statuses == [200, 200]  # and the pipelined request after it is served
        assert parse_responses(feed(data, cuts, echo))[0]["body"] == b"hello"
    else:
        assert statuses == [400]


# Every handler runs in a task of its own, scheduled (not started eagerly: see
# Exchange.start), whether or not it ever suspends.


async def test_a_handler_that_never_suspends_behaves_as_in_a_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Same response, access-log line and keep-alive; the handler runs in a task
    (current_task, asyncio.timeout), which is gone once it answered."""
    caplog.set_level(logging.INFO, logger="tinystream.access")
    seen: list[object] = []

    async def handler(request: Request) -> Response:
        seen.append(asyncio.current_task())
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(5):  # noqa: ASYNC100 - it needs a current task
                pass
        return Response("hi")

    protocol, transport = make_connection(handler)
    protocol.data_received(SIMPLE_GET)
    await settle(protocol)
    protocol.data_received(SIMPLE_GET)
    await settle(protocol)
    responses = parse_responses(bytes(transport.written))
    assert [r["body"] for r in responses] == [b"hi", b"hi"] and all(
        r["complete"] for r in responses
    )
    assert all(task is not None for task in seen) and not transport.closed
    lines = [r.getMessage() for r in caplog.records if r.name == "tinystream.access"]
    assert len(lines) == 2 and all(line.endswith(" complete") for line in lines)
    assert not protocol.ctx.tasks


async def test_many_pipelined_requests_are_answered_in_order_without_recursion() -> None:
    """Each answered request starts the next cycle of the pipeline: one after
    another, never one stack frame deeper per request."""

    async def handler(request: Request) -> Response:
        return Response(request.path)

    protocol, transport = make_connection(handler, max_pipeline_buffer=10**6)
    count = 3000  # far past the recursion limit if each request nested a call
    protocol.data_received(
        b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count))
    )
    await settle(protocol, rounds=4 * count)  # one exchange after another
    bodies = [r["body"] for r in parse_responses(bytes(transport.written))]
    assert bodies == [b"/%d" % i for i in range(count)]


async def test_a_client_leaving_cancels_a_handler_waiting_at_its_first_await(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tinystream.access")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return Response("never")

    protocol, transport = make_connection(handler)
    protocol.data_received(SIMPLE_GET)
    await asyncio.wait_for(started.wait(), 5)
    protocol.eof_received()
    await asyncio.wait_for(cancelled.wait(), 5)
    await settle(protocol)
    lines = [r.getMessage() for r in caplog.records if r.name == "tinystream.access"]
    assert len(lines) == 1 and lines[0].endswith(" client_gone")
    assert transport.written == b"" and not protocol.ctx.tasks


async def test_a_post_answered_before_its_body_closes_the_connection() -> None:
    """A handler that answers without reading the body (even before the body
    arrives) gets its response sent; the unread body ends the connection."""

    async def handler(request: Request) -> Response:
        return Response("early")

    protocol, transport = make_connection(handler)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    await settle(protocol)
    protocol.data_received(b"0123456789")
    await settle(protocol)
    responses = parse_responses(bytes(transport.written))
    assert [r["body"] for r in responses] == [b"early"]
    # It says so, then closes lingeringly: our FIN now, the body read and dropped,
    # so the kernel does not reset the connection under the response.
    assert responses[0]["headers"][b"connection"] == b"close"
    assert transport.eof_written
