"""Fuzzing the connection: whatever bytes, however split, whenever the client leaves.

Invariant (after h11's fuzz/afl-server.py): no matter what a client sends, every
request it completes gets a well-formed response or a 4xx/5xx and a close; the
handler never sees a request we should have refused; nothing escapes to the event
loop's exception handler or logs as our bug; and the server goes on serving the
next connection normally.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinystream import Request, Response
from tinystream.server import HTTPConnection

from .helpers import FakeTransport, make_connection, settle

VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"GET /q?x=%41 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    # RFC 9112 §2.2: empty lines before a request line are ignored (a stray CRLF
    # after a body, older clients) - also after a request that closes: dropped.
    b"\r\n\nGET /lead HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\n",
    b'POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2; a = "b;c"\r\nhi\r\n0\r\n\r\n',
]
HOSTILE = [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
    b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
    # What strict parsers (llhttp) refuse and h11 serves: bare LF in the head,
    # chunk-size lines with nothing after ';', an open quote, space after the size.
    b"POST / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nhi\r\n0\r\n\r\n",
    b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;a="b\r\nhi\r\n0\r\n\r\n',
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n",
    b"GET /a?b=1#c HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
]

pieces = st.one_of(
    st.sampled_from(VALID),
    st.sampled_from(HOSTILE),
    st.binary(max_size=64),
    # A valid request with one byte changed: near misses find the edge cases.
    st.tuples(st.sampled_from(VALID), st.integers(0, 200), st.integers(0, 255)).map(
        lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1 :]
    ),
)
endings = st.sampled_from(["none", "eof", "lost"])


class Recorder:
    """A handler that records what it was given."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        body = await request.body()
        return Response(b"ok " + body)


TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def check_request_is_sane(request: Request) -> None:
    # What every request a handler sees must satisfy, whatever was sent.
    assert request.http_version in ("1.0", "1.1")
    assert TOKEN.fullmatch(request.method), request.method  # RFC 9110 §9.1: a token
    assert request.path.startswith("/") or request.path == "*"
    assert "#" not in request.target  # RFC 9112 §3.2: no fragment in a request target
    names = [name for name, _ in request.headers.raw]
    assert not (b"content-length" in names and b"transfer-encoding" in names)
    for name, value in request.headers.raw:
        assert b"\r" not in value and b"\n" not in value and b"\0" not in value, (name, value)


def parse_output(data: bytes, methods: list[str]) -> list[int]:
    """Statuses of the responses in ``data``; fails on anything malformed.

    ``methods`` are those of the requests the handler saw. A refused request's
    method is unknown here, and only HEAD changes how its response reads: the
    last response may be read either way.
    """
    try:
        return _parse_output(data, methods, "GET")
    except h11.RemoteProtocolError:
        return _parse_output(data, methods, "HEAD")


def _parse_output(data: bytes, methods: list[str], last_method: str) -> list[int]:
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    client.receive_data(b"")
    statuses: list[int] = []
    methods = list(methods)
    while True:
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
        if client.our_state is h11.IDLE:
            if not client.trailing_data[0]:
                return statuses  # nothing more was sent
            # The method matters only for HEAD (no body follows).
            method = methods.pop(0) if methods else last_method
            client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
            client.send(h11.EndOfMessage())
        event = client.next_event()  # a malformed response raises here
        if isinstance(event, h11.Response):
            statuses.append(event.status_code)
        elif (
            isinstance(event, h11.ConnectionClosed)
            or event is h11.NEED_DATA
            or (isinstance(event, h11.EndOfMessage) and client.their_state is h11.MUST_CLOSE)
        ):
            return statuses


async def drive(data: bytes, cuts: list[int], ending: str) -> tuple[FakeTransport, Recorder, Any]:
    recorder = Recorder()
    protocol, transport = make_connection(recorder, max_head_size=4096)
    start = 0
    for cut in [*sorted({c for c in cuts if c < len(data)}), len(data)]:
        if transport.closed:
            break
        if cut > start:
            protocol.data_received(data[start:cut])
            await asyncio.sleep(0)
        start = cut
    if not transport.closed and ending == "none" and protocol.h11.their_state is h11.SEND_BODY:
        # The body is incomplete and the client has not finished sending: the
        # handler rightly waits for the rest. The client then vanishes.
        ending = "lost"
    if not transport.closed:
        if ending == "eof":
            if not protocol.eof_received():
                transport.close()
        elif ending == "lost":
            transport.abort()
    await settle(protocol)
    return transport, recorder, protocol.ctx


async def check_connection(data: bytes, cuts: list[int], ending: str) -> None:
    """Drive one connection and check the invariant (also scripts/fuzz.py's oracle)."""
    transport, recorder, ctx = await drive(data, cuts, ending)
    for request in recorder.requests:
        check_request_is_sane(request)
    statuses = parse_output(bytes(transport.written), [r.method for r in recorder.requests])
    # A served request is answered 200; a refusal is the last thing on the wire.
    assert all(status == 200 for status in statuses[:-1]), statuses
    if statuses and statuses[-1] != 200:
        assert 400 <= statuses[-1] <= 599
        assert transport.closed or transport.eof_written
    # The server still serves a new connection normally.
    fresh = HTTPConnection(ctx)
    fresh_transport = FakeTransport(fresh)
    fresh.connection_made(fresh_transport)
    fresh.data_received(VALID[0])
    await settle(fresh)
    assert parse_output(bytes(fresh_transport.written), ["GET"]) == [200]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(pieces, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 25_000), max_size=8),
    ending=endings,
)
def test_fuzzed_connections_keep_the_invariant(
    chunks: list[bytes], cuts: list[int], ending: str
) -> None:
    data = b"".join(chunks)
    loop_errors: list[dict[str, Any]] = []
    bug_logs: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                bug_logs.append(record)

    catcher = Catch()
    logging.getLogger("tinystream").addHandler(catcher)

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        await check_connection(data, cuts, ending)

    try:
        asyncio.run(scenario())
    finally:
        logging.getLogger("tinystream").removeHandler(catcher)
    assert loop_errors == []
    assert bug_logs == []


@pytest.mark.parametrize("request_bytes", HOSTILE)
def test_hostile_requests_get_an_answer_even_for_head(request_bytes: bytes) -> None:
    async def scenario() -> None:
        transport, recorder, _ = await drive(request_bytes, [], "none")
        methods = ["HEAD"] if request_bytes.startswith(b"HEAD") else ["GET"]
        statuses = parse_output(bytes(transport.written), methods)
        assert len(statuses) == 1 and 400 <= statuses[0] <= 599
        assert recorder.requests == []

    asyncio.run(scenario())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.sampled_from(VALID), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 600), max_size=8),
)
def test_valid_requests_are_all_served_however_split(chunks: list[bytes], cuts: list[int]) -> None:
    """Valid requests, pipelined and split anywhere, are each served, up to the first
    that closes the connection (RFC 9112 §9.6: what follows it is dropped, not refused)."""
    served = 0
    for piece in chunks:
        if piece.startswith(b"\r\n") and piece.strip(b"\r\n") == b"":
            continue  # only empty lines: ignored (RFC 9112 §2.2)
        served += 1
        if b"HTTP/1.0" in piece or b"Connection: close" in piece:
            break

    async def scenario() -> None:
        transport, recorder, _ = await drive(b"".join(chunks), cuts, "none")
        statuses = parse_output(bytes(transport.written), [r.method for r in recorder.requests])
        assert statuses == [200] * served

    asyncio.run(scenario())
