"""The response writer: every framing, every kind of write, read back by an h11 client
with the bytes split anywhere."""

from __future__ import annotations

import asyncio
import functools
import itertools
import zlib
from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinystream._compress import GzipStream
from tinystream._context import ServerContext
from tinystream._flow import FlowControl
from tinystream._writer import HOLD_LIMIT, Framing, ResponseWriter
from tinystream.config import Config
from tinystream.responses import Response
from tinystream.sse import PING


class Recorder(asyncio.Transport):
    """A transport that keeps what is written and how the connection ended."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.ended: str | None = None  # "fin" or "reset"
        self.writelines_called = False
        self.writes = 0

    def write(self, data: Any) -> None:
        assert self.ended is None, "write after the end"
        self.written += data
        self.writes += 1

    def writelines(self, list_of_data: Any) -> None:
        self.writelines_called = True

    def is_closing(self) -> bool:
        return self.ended is not None

    def close(self) -> None:
        self.ended = "fin"

    def abort(self) -> None:
        self.ended = "reset"

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.ended = "fin"


@functools.cache
def context() -> ServerContext:
    # The writer only reads the clock and the options of its context; the loop it
    # was made on need not run (its time() works closed too).
    async def make() -> ServerContext:
        return ServerContext(lambda request: Response(), Config(server_header=""))

    return asyncio.run(make())


def make_writer(
    request: bytes, ctx: ServerContext | None = None, transport: Recorder | None = None
) -> tuple[ResponseWriter, Recorder, h11.Connection]:
    """A writer whose h11 connection has just received ``request``.

    Held writes need a running loop: pass a context made on it.
    """
    ctx = ctx or context()
    server = h11.Connection(h11.SERVER)
    server.receive_data(request)
    assert isinstance(server.next_event(), h11.Request)
    while server.next_event() is not h11.NEED_DATA:  # the end of a bodiless request
        pass
    transport = transport or Recorder()
    writer = ResponseWriter(transport, server, FlowControl(transport), ctx)
    writer.begin(head_only=request.startswith(b"HEAD"))
    return writer, transport, server


def read_back(data: bytes, cuts: list[int], method: bytes) -> dict[str, Any]:
    """Parse ``data`` as a client would, fed in pieces cut at ``cuts``.

    (h11's client speaks HTTP/1.1 only; it reads a close-delimited body to EOF.)
    """
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    result: dict[str, Any] = {"status": None, "body": b"", "complete": False, "headers": {}}
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a] + [b""]  # b"": EOF
    for piece in pieces:
        client.receive_data(piece)
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError:
                return result  # a body cut short, seen at EOF
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.Response):
                result["status"] = event.status_code
                result["headers"] = dict(event.headers)
            elif isinstance(event, h11.Data):
                result["body"] += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                result["complete"] = True
    return result


GET_11 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
GET_10 = b"GET / HTTP/1.0\r\n\r\n"
HEAD_11 = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"

chunks = st.lists(st.binary(min_size=0, max_size=300), max_size=8)
cuts = st.lists(st.integers(0, 5000), max_size=10)


@given(items=chunks, cuts=cuts, ping=st.booleans())
def test_chunked_body_reads_back_whole_however_split(
    items: list[bytes], cuts: list[int], ping: bool
) -> None:
    writer, transport, _ = make_writer(GET_11)
    writer.start_body(200, [], None)
    assert writer.framing is Framing.CHUNKED
    for item in items:
        writer.write(item)  # an empty item writes nothing (it would end the body)
        if ping:
            writer.write(PING)
    writer.end()
    sent = b"".join(item + (PING if ping else b"") for item in items)
    result = read_back(bytes(transport.written), cuts, b"GET")
    assert result == {**result, "status": 200, "body": sent, "complete": True}
    assert writer.bytes_sent == len(sent)
    assert transport.ended is None and not transport.writelines_called


@given(items=chunks, cuts=cuts)
def test_length_body_reads_back_whole_however_split(items: list[bytes], cuts: list[int]) -> None:
    body = b"".join(items)
    writer, transport, server = make_writer(GET_11)
    writer.start_body(200, [], len(body))
    assert writer.framing is Framing.LENGTH
    for item in items:
        writer.write(item)
    writer.end()
    assert server.our_state is h11.DONE
    result = read_back(bytes(transport.written), cuts, b"GET")
    assert result["body"] == body and result["complete"]


def test_length_body_cannot_be_overrun() -> None:
    """h11 sees every byte of a length-framed body, pings and preludes included."""
    writer, _transport, _ = make_writer(GET_11)
    writer.start_body(200, [], 5)
    writer.write(b"12345")
    with pytest.raises(h11.LocalProtocolError):
        writer.write(PING)


@given(items=chunks, cuts=cuts)
def test_close_delimited_body_for_http_10(items: list[bytes], cuts: list[int]) -> None:
    writer, transport, server = make_writer(GET_10)
    writer.start_body(200, [], None)
    assert writer.framing is Framing.CLOSE
    for item in items:
        writer.write(item)
    writer.end()
    assert server.our_state is h11.MUST_CLOSE
    writer.close()
    result = read_back(bytes(transport.written), cuts, b"GET")
    assert result["body"] == b"".join(items) and result["complete"]


@pytest.mark.parametrize("request_bytes", [HEAD_11, GET_11])
def test_no_body_for_head_or_204(request_bytes: bytes) -> None:
    writer, transport, server = make_writer(request_bytes)
    status = 200 if request_bytes is HEAD_11 else 204
    writer.start_body(status, [], None)
    assert writer.framing is Framing.NONE and not writer.is_open()
    assert server.our_state is h11.DONE
    result = read_back(bytes(transport.written), [], request_bytes.split()[0])
    assert result["status"] == status and result["body"] == b"" and result["complete"]


@given(items=st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=5), cuts=cuts)
def test_truncation_delivers_what_was_sent_then_a_fin(items: list[bytes], cuts: list[int]) -> None:
    for content_length in (None, 10_000):
        writer, transport, _ = make_writer(GET_11)
        writer.start_body(200, [], content_length)
        for item in items:
            writer.write(item)
        writer.truncate()
        assert transport.ended == "fin"  # everything written is delivered
        result = read_back(bytes(transport.written), cuts, b"GET")
        assert result["body"] == b"".join(items) and not result["complete"]


def test_truncating_a_close_delimited_body_resets() -> None:
    """Without framing a FIN would look like the end: only a reset says otherwise."""
    writer, transport, _ = make_writer(GET_10)
    writer.start_body(200, [], None)
    writer.write(b"partial")
    writer.truncate()
    assert transport.ended == "reset"


@given(body=st.binary(max_size=70_000), cuts=cuts, head=st.booleans())
def test_whole_responses_read_back(body: bytes, cuts: list[int], head: bool) -> None:
    writer, transport, server = make_writer(HEAD_11 if head else GET_11)
    writer.send_whole(200, [(b"content-type", b"application/octet-stream")], body)
    assert server.our_state is h11.DONE
    result = read_back(bytes(transport.written), cuts, b"HEAD" if head else b"GET")
    assert result["complete"]
    assert result["headers"][b"content-length"] == b"%d" % len(body)
    assert result["body"] == (b"" if head else body)


def test_compressed_stream_ends_with_the_gzip_trailer() -> None:
    writer, transport, _ = make_writer(GET_11)
    writer.start_body(200, [(b"content-encoding", b"gzip")], None, GzipStream())
    for item in (b"one\n", b"two\n"):
        writer.write(item)
    writer.end()
    result = read_back(bytes(transport.written), [], b"GET")
    assert result["complete"]
    assert zlib.decompress(result["body"], 31) == b"one\ntwo\n"
    assert writer.bytes_sent == len(b"one\ntwo\n")  # payload bytes, before compression


def test_continue_is_sent_once_and_only_before_the_head() -> None:
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    writer, transport, _ = make_writer(request)
    writer.send_continue()
    assert bytes(transport.written).startswith(b"HTTP/1.1 100 ")
    written = len(transport.written)
    writer.send_continue()
    assert len(transport.written) == written


# Field names and values: the printable ASCII, the separators that matter, and bytes
# a header injection would use.
field_bytes = st.binary(max_size=12) | st.text(
    alphabet=" \t\r\n\x00\x0b\x0c:;,aZ09-_!~\x7f\x80\xff", max_size=12
).map(lambda text: text.encode("latin-1"))


@given(name=field_bytes, value=field_bytes)
def test_fields_are_refused_exactly_when_h11_refuses_them(name: bytes, value: bytes) -> None:
    """The writer serialises fields itself: it must accept what h11 accepts and
    refuse what h11 refuses, and an accepted field must read back as itself."""
    from tinystream._writer import field_lines

    framing = name.lower() in (b"content-length", b"transfer-encoding")
    try:
        h11.Response(status_code=200, headers=[(name, value)])
        h11_accepts = True
    except h11.LocalProtocolError:
        h11_accepts = False
    try:
        lines, connection = field_lines([(name, value)])
    except ValueError:
        assert framing or not h11_accepts
        with pytest.raises(ValueError):  # refused again: a refusal is never remembered
            field_lines([(name, value)])
        return
    assert h11_accepts and not framing
    # The second time the field may come from the writer's memory of valid fields:
    # the same lines, the same routing to h11.
    assert field_lines([(name, value)]) == (lines, connection)
    if name.lower() == b"connection":
        assert (lines, connection) == (b"", [(name, value)])
        return
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    client.receive_data(b"HTTP/1.1 200 OK\r\n" + lines + b"content-length: 0\r\n\r\n")
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.headers[0] == (name.lower(), value)


@pytest.mark.parametrize(
    "field",
    [
        (b"x-evil", b"a\r\nset-cookie: session=stolen"),
        (b"x-evil", b"a\nset-cookie: session=stolen"),
        (b"x-evil\r\nset-cookie", b"stolen"),
        (b"x-nul", b"a\x00b"),
        (b"content-length", b"0"),
        (b"Transfer-Encoding", b"chunked"),
    ],
)
def test_a_field_added_after_the_response_was_built_cannot_inject(
    field: tuple[bytes, bytes],
) -> None:
    """Response checks its fields when built, but its list can be changed later:
    the writer checks again, before anything is sent, so nothing is injected and
    a 500 can still be sent."""
    response = Response("ok")
    response.headers.append(field)
    writer, transport, server = make_writer(GET_11)
    with pytest.raises(ValueError):
        writer.send_whole(response.status, response.headers, response.body)
    assert transport.written == b"" and not writer.head_sent
    writer.send_error(500, "Internal Server Error")
    result = read_back(bytes(transport.written), [], b"GET")
    assert result["status"] == 500 and result["complete"]
    assert b"set-cookie" not in transport.written and server.our_state is h11.DONE


def test_connection_close_from_a_handler_reaches_h11() -> None:
    """h11 decides keep-alive from the fields it is given: a handler's
    ``Connection: close`` must reach it, not only the client."""
    writer, transport, server = make_writer(GET_11)
    writer.send_whole(200, [(b"connection", b"close")], b"bye")
    assert server.our_state is h11.MUST_CLOSE
    assert transport.written.count(b"connection: close") == 1


# Held writes: small body writes of one loop iteration leave as one write


def live_context() -> ServerContext:
    """A context on the running loop (held writes are flushed by a loop callback)."""
    return ServerContext(lambda request: Response(), Config(server_header=""))


async def next_iteration() -> None:
    await asyncio.sleep(0)  # one loop iteration: what the tests below are about


def test_a_burst_of_small_writes_leaves_in_one_write() -> None:
    async def burst() -> tuple[int, int, bytes]:
        writer, transport, _ = make_writer(GET_11, live_context())
        writer.start_body(200, [], None)
        head_writes = transport.writes
        for n in range(100):
            writer.write(b"data: %d\n\n" % n, hold=True)
        held_back = transport.writes - head_writes  # nothing yet: the iteration goes on
        await next_iteration()
        writer.end()
        return held_back, transport.writes - head_writes, bytes(transport.written)

    held_back, writes, wire = asyncio.run(burst())
    assert held_back == 0
    assert writes == 2  # the hundred events together, then the last chunk
    result = read_back(wire, [], b"GET")
    assert result["body"] == b"".join(b"data: %d\n\n" % n for n in range(100))
    assert result["complete"]


# What happens between two held writes: another held write, an unheld one (a ping,
# the prelude), or the end of a loop iteration.
steps = st.lists(
    st.tuples(
        st.sampled_from(["held", "unheld", "iteration"]), st.binary(max_size=HOLD_LIMIT + 10)
    ),
    max_size=12,
)


@given(steps=steps, length=st.booleans(), ending=st.sampled_from(["end", "truncate"]), cuts=cuts)
def test_held_writes_keep_their_order_and_reach_the_client_whole(
    steps: list[tuple[str, bytes]], length: bool, ending: str, cuts: list[int]
) -> None:
    body = b"".join(data for kind, data in steps if kind != "iteration")

    async def run() -> tuple[bytes, str | None]:
        writer, transport, _ = make_writer(GET_11, live_context())
        writer.start_body(200, [], len(body) if length else None)
        for kind, data in steps:
            if kind == "iteration":
                await next_iteration()
            else:
                writer.write(data, hold=kind == "held")
        if ending == "end":
            writer.end()
        else:
            writer.truncate()
        await next_iteration()  # a flush still scheduled finds nothing held
        return bytes(transport.written), transport.ended

    wire, ended = asyncio.run(run())
    result = read_back(wire, cuts, b"GET")
    assert result["body"] == body
    # (A truncated length-framed body that got all its declared bytes is whole.)
    assert result["complete"] == (ending == "end" or length)
    assert ended == (None if ending == "end" else "fin")


def test_held_writes_go_at_once_when_they_would_fill_the_transport() -> None:
    """The write that reaches the high-water mark goes at once, and pauses as unheld."""

    class Backlogged(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def write(self, data: Any) -> None:
            super().write(data)
            self.sizes.append(len(data))

        def get_write_buffer_size(self) -> int:
            return len(self.written)  # nothing leaves: every byte written is still here

    high, framed = 4096, 206  # 200 bytes in a chunk: "c8\r\n" + 200 + "\r\n"

    async def run() -> tuple[int, list[int]]:
        ctx = ServerContext(
            lambda request: Response(),
            Config(server_header="", write_high_water=high, write_low_water=1024),
        )
        writer, transport, _ = make_writer(GET_11, ctx, Backlogged())
        assert isinstance(transport, Backlogged)
        writer.start_body(200, [], None)
        head = len(transport.written)
        for _ in range(40):
            writer.write(b"x" * 200, hold=True)
            if len(transport.sizes) > 1:
                break  # a body write went out (the head was the first)
        return head, transport.sizes[1:]

    head, body_writes = asyncio.run(run())
    assert len(body_writes) == 1
    # Everything held went in that write, which brought the buffer to the mark.
    assert head + body_writes[0] >= high > head + body_writes[0] - framed
    assert body_writes[0] % framed == 0


def test_a_reset_drops_what_is_held() -> None:
    async def run() -> tuple[bytes, str | None]:
        writer, transport, _ = make_writer(GET_11, live_context())
        writer.start_body(200, [], None)
        before = bytes(transport.written)
        writer.write(b"never sent", hold=True)
        writer.reset()
        await next_iteration()  # the scheduled flush must not write after the reset
        return bytes(transport.written)[len(before) :], transport.ended

    assert asyncio.run(run()) == (b"", "reset")
