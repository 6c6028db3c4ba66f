"""End to end over real sockets on 127.0.0.1: every wire behaviour of the contract."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import h11
import pytest

from tinystream import (
    FileResponse,
    HTTPError,
    JSONResponse,
    Request,
    Response,
    StreamingResponse,
)
from tinystream.testing import ClientConnection, serve_for_test

from .helpers import parse_responses, wait

TIMEOUT = 5.0


class Probe:
    """Records what a producer went through, with events to await instead of sleeping."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = asyncio.Event()  # its finally ran
        self.pulled = 0

    async def endless(
        self, chunk: bytes = b"x" * 1024, awaits: bool = True
    ) -> AsyncIterator[bytes]:
        self.started.set()
        try:
            while True:
                self.pulled += 1
                yield chunk
                if awaits:
                    await asyncio.sleep(0)
        finally:
            self.finished.set()

    async def idle(self) -> AsyncIterator[bytes]:
        """Sends one chunk, then waits for an item that never comes."""
        self.started.set()
        try:
            yield b"first\n"
            await asyncio.Event().wait()
        finally:
            self.finished.set()


def small_buffer_listener(size: int = 4096) -> socket.socket:
    """A listening socket whose accepted connections have a small send buffer.

    Linux copies SO_SNDBUF from the listener to accepted sockets, so the kernel
    holds only a few KiB and backpressure reaches the server almost at once.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.bind(("127.0.0.1", 0))
    return sock


async def hello(request: Request) -> Response:
    return Response("hello\n")


# Keep-alive, pipelining, versions, HEAD


async def test_keep_alive_reuses_the_connection() -> None:
    async with serve_for_test(hello) as client, client.connection() as conn:
        for _ in range(3):
            response = await conn.request("GET", "/")
            assert response.status == 200 and response.body == b"hello\n"
            assert conn.reusable
        assert client.server.stats().connections == 1


async def test_pipelined_requests_over_a_socket_are_answered_in_order() -> None:
    async def path_echo(request: Request) -> Response:
        return Response(request.path)

    async with serve_for_test(path_echo) as client, client.connection() as conn:
        await conn.send_raw(
            b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
            + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        raw = await conn.read_raw_until_close()
    parser = h11.Connection(h11.CLIENT)
    bodies = []
    parser.receive_data(raw)
    for _ in range(6):
        if parser.our_state is h11.DONE:
            parser.start_next_cycle()
        parser.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
        parser.send(h11.EndOfMessage())
        body = b""
        while not isinstance(event := parser.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                body += bytes(event.data)
        bodies.append(body)
    assert bodies == [b"/0", b"/1", b"/2", b"/3", b"/4", b"/last"]


async def test_http_10_streams_are_close_delimited() -> None:
    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(iter([b"one ", b"two ", b"three"]))

    async with serve_for_test(stream) as client, client.connection() as conn:
        response = await conn.start("GET", "/", http_version="1.0")
        assert "transfer-encoding" not in response.headers
        assert response.headers.get("connection") == "close"
        assert await response.read() == b"one two three"
        assert response.complete


async def test_http_10_fixed_response() -> None:
    async with serve_for_test(hello) as client, client.connection() as conn:
        response = await conn.request("GET", "/", http_version="1.0")
        assert response.body == b"hello\n" and response.headers["content-length"] == "6"
        assert not conn.reusable


async def test_head_sends_headers_only_and_closes_an_unstarted_producer() -> None:
    closed = asyncio.Event()

    class Producer:
        def __aiter__(self) -> Producer:
            return self

        async def __anext__(self) -> bytes:
            raise AssertionError("HEAD must not pull the producer")

        async def aclose(self) -> None:
            closed.set()

    async def handler(request: Request) -> Response | StreamingResponse:
        if request.path == "/fixed":
            return Response(b"x" * 100)
        return StreamingResponse(Producer())

    async with serve_for_test(handler) as client, client.connection() as conn:
        fixed = await conn.request("HEAD", "/fixed")
        assert fixed.headers["content-length"] == "100" and fixed.body == b""
        stream = await conn.request("HEAD", "/stream")
        assert stream.body == b"" and stream.headers["transfer-encoding"] == "chunked"
        await wait(closed)
        assert conn.reusable


async def test_date_and_server_headers() -> None:
    async with serve_for_test(hello) as client:
        response = await client.get("/")
        assert response.headers["server"] == "tinystream"
        assert response.headers["date"].endswith(" GMT")


# Request bodies


async def test_bodies_with_content_length_and_chunked() -> None:
    async def echo(request: Request) -> Response:
        return Response(await request.body())

    async with serve_for_test(echo) as client:
        assert (await client.post("/", body=b"fixed body")).body == b"fixed body"
        parts = [b"a" * 10, b"b" * 70_000, b"c"]
        assert (await client.post("/", body=iter(parts))).body == b"".join(parts)


async def test_request_stream_delivers_the_body_incrementally() -> None:
    first_seen = asyncio.Event()

    async def reader(request: Request) -> Response:
        sizes = []
        async for chunk in request.stream():
            sizes.append(len(chunk))
            first_seen.set()
        return JSONResponse(sum(sizes))

    async with serve_for_test(reader) as client, client.connection() as conn:
        await conn.send_raw(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n"
        )
        await wait(first_seen)  # the handler has the first chunk; the rest is not sent yet
        await conn.send_raw(b"32\r\n" + b"y" * 50 + b"\r\n0\r\n\r\n")
        raw = await conn.read_raw_until_close()
        assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\n150")


async def test_expect_100_continue_is_sent_when_the_handler_reads() -> None:
    async def reads(request: Request) -> Response:
        return Response(await request.body())

    async def refuses(request: Request) -> Response:
        raise HTTPError(403, "no uploads")

    async with serve_for_test(reads) as client, client.connection() as conn:
        await conn.send_raw(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 4\r\nConnection: close\r\n\r\n"
        )
        interim = await conn.read_raw()
        assert interim == b"HTTP/1.1 100 \r\n\r\n"
        await conn.send_raw(b"data")
        raw = await conn.read_raw_until_close()
        assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b"\r\n\r\ndata")
    async with serve_for_test(refuses) as client, client.connection() as conn:
        response = await conn.request("POST", "/", headers={"Expect": "100-continue"}, body=b"data")
        assert response.status == 403  # answered without ever asking for the body


# Backpressure


# 64 KiB chunks: large enough for the framing that once went through writelines(),
# which never pauses the protocol on CPython 3.12.0-3.12.8 and 3.13.0-3.13.1.
CHUNK_SIZES = [1024, 64 * 1024]


@pytest.mark.parametrize("size", CHUNK_SIZES)
async def test_slow_reader_bounds_what_is_pulled_from_the_producer(size: int) -> None:
    chunk = b"z" * size
    probe = Probe()
    high = 16 * 1024

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(probe.endless(chunk))

    listener = small_buffer_listener()
    async with serve_for_test(
        handler, sock=listener, write_high_water=high, write_low_water=4096
    ) as client:
        async with client.stream("GET", "/", recv_buffer=4096) as response:
            stats = await client.server.wait_stats(lambda s: s.paused_writers == 1, TIMEOUT)
            framing = 16  # the size line and CRLFs of one chunk
            assert stats.buffered_bytes <= high + len(chunk) + framing
            pulled_at_pause = probe.pulled
            # Bytes pulled = in our transport buffer + in the kernel's buffers. With
            # a 4 KiB send buffer and a 4 KiB receive window that is well under 200 KiB
            # plus a chunk; without backpressure an endless producer would be pulled
            # without bound.
            assert pulled_at_pause * len(chunk) < high + len(chunk) + 200 * 1024
            # Reading resumes the producer.
            received = 0
            async for data in response.aiter_bytes(4096):
                received += len(data)
                if received > 1024 * 1024:
                    break
            assert probe.pulled > pulled_at_pause
        await wait(probe.finished)


# Disconnect


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_producer_waiting_for_its_next_item_is_closed_when_the_client_leaves(
    how: str,
) -> None:
    probe = Probe()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(probe.idle())

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/") as response:
            async for data in response.aiter_bytes():
                assert data == b"first\n"
                break
            if how == "abort":
                response.abort()
            else:
                await response.close()
        # A reset or a plain FIN: either way the client left, and the producer,
        # waiting for an item that never comes, is closed long before the server
        # shuts down at the end of this block.
        await wait(probe.finished)
        stats = await client.server.wait_stats(
            lambda s: s.connections == 0 and s.streams == 0, TIMEOUT
        )
        assert stats.outcomes == {"client_gone": 1}


async def test_producer_that_never_awaits_stops_and_others_are_served() -> None:
    probe = Probe()

    async def handler(request: Request) -> Response | StreamingResponse:
        if request.path == "/busy":
            return StreamingResponse(probe.endless(b"b" * 4096, awaits=False))
        return Response("still here")

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/busy") as response:
            async for _ in response.aiter_bytes():
                break
            # While the busy producer runs, the loop still serves others.
            other = await asyncio.wait_for(client.get("/other"), TIMEOUT)
            assert other.body == b"still here"
            response.abort()
        await wait(probe.finished)
        pulled = probe.pulled
        other = await asyncio.wait_for(client.get("/other"), TIMEOUT)
        assert other.status == 200 and probe.pulled == pulled  # stopped for good


async def test_blocked_sync_iterator_is_abandoned_then_closed() -> None:
    release = threading.Event()
    closed = threading.Event()

    def blocking() -> Iterator[bytes]:
        try:
            yield b"first\n"
            release.wait(TIMEOUT)
            yield b"second\n"
        finally:
            closed.set()

    async def handler(request: Request) -> Response | StreamingResponse:
        if request.path == "/other":
            return Response("served meanwhile")
        return StreamingResponse(blocking())

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        async for data in response.aiter_bytes():
            assert data == b"first\n"
            break
        # next() is blocked in a worker thread: the loop serves others.
        assert (await asyncio.wait_for(client.get("/other"), TIMEOUT)).status == 200
        response.abort()
        await client.server.wait_stats(lambda s: s.streams == 0, TIMEOUT)
        assert not closed.is_set()  # cannot interrupt a running next() ...
        release.set()
        # ... but closes the iterator as soon as it returns.
        assert await asyncio.to_thread(closed.wait, TIMEOUT)


async def test_request_reports_disconnect() -> None:
    noticed = asyncio.Event()
    tasks = set()

    async def handler(request: Request) -> StreamingResponse:
        async def watch() -> None:
            await request.wait_disconnected()
            assert request.is_disconnected()
            noticed.set()

        task = asyncio.ensure_future(watch())
        tasks.add(task)
        return StreamingResponse(Probe().idle())

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/") as response:
            async for _ in response.aiter_bytes():
                break
            response.abort()
        await wait(noticed)


async def test_with_half_close_a_half_closed_client_still_gets_the_whole_response() -> None:
    async def handler(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(20):
                yield b"part %d\n" % i
                await asyncio.sleep(0)

        return StreamingResponse(parts())

    async with (
        serve_for_test(handler, half_close=True) as client,
        client.stream("GET", "/") as response,
    ):
        response.shutdown_write()
        body = await response.read()
        assert response.complete
        assert body == b"".join(b"part %d\n" % i for i in range(20))


async def test_by_default_a_half_close_ends_the_stream() -> None:
    """Without ``half_close`` a FIN means the client left, even if it still reads."""
    probe = Probe()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(probe.idle())

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        async for data in response.aiter_bytes():
            assert data == b"first\n"
            break
        response.shutdown_write()
        await wait(probe.finished)
        assert await response.read() == b""
        assert not response.complete


# Errors


async def test_handler_errors_before_the_first_byte() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("secret internal detail")
        if request.path == "/teapot":
            raise HTTPError(418, "short and stout", headers={"X-Why": "tea"})
        return "not a response"  # type: ignore[return-value]

    async with serve_for_test(handler) as client, client.connection() as conn:
        boom = await conn.request("GET", "/boom")
        assert boom.status == 500 and b"secret" not in boom.body
        teapot = await conn.request("GET", "/teapot")
        assert teapot.status == 418 and teapot.body == b"short and stout\n"
        assert teapot.headers["x-why"] == "tea"
        wrong = await conn.request("GET", "/wrong-type")
        assert wrong.status == 500
        assert conn.reusable  # a 500 sent whole keeps the connection usable


async def test_producer_error_mid_stream_truncates_the_body() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"some data\n"
        raise RuntimeError("producer broke")

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(failing())

    async with serve_for_test(handler) as client, client.stream("GET", "/") as response:
        body = await response.read()
        assert body == b"some data\n"
        assert not response.complete  # never a fake "complete" body


async def test_server_keeps_serving_after_malformed_requests() -> None:
    async with serve_for_test(hello) as client:
        for garbage in (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        ):
            async with client.connection() as conn:
                await conn.send_raw(garbage)
                raw = await conn.read_raw_until_close()
                assert raw.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431"))
        assert (await client.get("/")).status == 200


# Timeouts and limits


async def test_trickled_head_is_cut_off_at_the_header_deadline() -> None:
    async with serve_for_test(hello, header_timeout=0.5) as client, client.connection() as conn:
        started = time.monotonic()
        # 170 bytes at one every 50 ms: 8.5 s to send it all, were it allowed.
        head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 140
        closed = asyncio.ensure_future(conn.read_raw_until_close())
        for byte in head:
            if closed.done():
                break
            try:
                await conn.send_raw(bytes([byte]))  # the client's pace, not a wait
            except ConnectionError:
                break  # reset after the server's lingering close: cut off indeed
            await asyncio.sleep(0.05)
        raw = await asyncio.wait_for(closed, TIMEOUT)
        assert raw.startswith(b"HTTP/1.1 408")
        # Far below the 8.5 s a deadline extended by each trickled byte would take.
        assert time.monotonic() - started < 0.5 + 4.5


async def test_silent_connection_is_closed_after_the_keep_alive_timeout() -> None:
    async with serve_for_test(hello, keep_alive_timeout=0.3) as client, client.connection() as conn:
        assert await asyncio.wait_for(conn.read_raw_until_close(), TIMEOUT) == b""


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with serve_for_test(hello, keep_alive_timeout=0.3) as client, client.connection() as conn:
        await conn.request("GET", "/")
        assert await asyncio.wait_for(conn.read_raw_until_close(), TIMEOUT) == b""


async def test_a_handler_slower_than_the_idle_timeout_is_answered_then_the_idle_timeout_applies() -> (
    None
):
    """The idle deadline armed at connect passes while the handler works: nothing happens.

    (One timer serves every deadline of a connection; a deadline moved later, or
    cleared while a request is served, is found when the timer fires.)
    """
    idle = 0.2

    async def slow(request: Request) -> Response:
        await asyncio.sleep(idle * 3)  # the handler's own work, longer than the idle timeout
        return Response("late but whole")

    async with serve_for_test(slow, keep_alive_timeout=idle) as client, client.connection() as conn:
        started = time.monotonic()
        response = await conn.request("GET", "/")
        assert response.status == 200 and response.body == b"late but whole"
        assert await asyncio.wait_for(conn.read_raw_until_close(), TIMEOUT) == b""
        assert time.monotonic() - started > idle * 3.5  # the work, then a whole idle timeout


async def test_connections_past_the_limit_get_503() -> None:
    async with serve_for_test(hello, max_connections=1) as client, client.connection() as first:
        assert (await first.request("GET", "/")).status == 200
        second = await client.get("/")
        assert second.status == 503
        assert (await first.request("GET", "/")).status == 200


@pytest.mark.parametrize("size", CHUNK_SIZES)
async def test_write_stall_cuts_off_a_client_that_stops_reading(
    caplog: pytest.LogCaptureFixture, size: int
) -> None:
    caplog.set_level(logging.INFO, logger="tinystream.access")
    probe = Probe()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(probe.endless(b"s" * size))

    listener = small_buffer_listener()
    async with serve_for_test(handler, sock=listener, write_stall_timeout=0.3) as client:
        async with client.stream("GET", "/", recv_buffer=4096):
            await wait(probe.finished)  # we never read: the stall timer fired
        await client.server.wait_stats(lambda s: s.connections == 0, TIMEOUT)
    assert any(r.getMessage().endswith(" stalled") for r in caplog.records)


# Shutdown


async def test_shutdown_ends_open_streams_within_the_grace_period() -> None:
    probe = Probe()
    told = asyncio.Event()

    async def handler(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            async for chunk in probe.idle():
                yield chunk
                if request.is_shutting_down():
                    told.set()

        async def watch() -> None:
            await request.wait_shutting_down()
            told.set()

        watcher = asyncio.ensure_future(watch())
        handler.watchers.add(watcher)  # type: ignore[attr-defined]
        return StreamingResponse(stream())

    handler.watchers = set()  # type: ignore[attr-defined]
    async with serve_for_test(handler, graceful_timeout=0.3) as client:
        async with client.stream("GET", "/") as response:
            async for _ in response.aiter_bytes():
                break
            started = time.monotonic()
            await asyncio.wait_for(client.server.close(), TIMEOUT)
            assert time.monotonic() - started < 0.3 + 2.5
            assert probe.finished.is_set() and told.is_set()
            await response.read()
            assert not response.complete


async def test_shutdown_lets_in_flight_responses_finish() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            entered.set()
            await release.wait()
        return Response("done")

    async with serve_for_test(handler, graceful_timeout=5) as client:
        async with client.connection() as idle_conn:
            await idle_conn.request("GET", "/fast")
            pending = asyncio.ensure_future(client.get("/slow"))
            await wait(entered)
            closing = asyncio.ensure_future(client.server.close())
            # An idle keep-alive connection is closed at once.
            assert await asyncio.wait_for(idle_conn.read_raw_until_close(), TIMEOUT) == b""
            release.set()
            response = await asyncio.wait_for(pending, TIMEOUT)
            assert response.body == b"done" and response.headers["connection"] == "close"
            await asyncio.wait_for(closing, TIMEOUT)


# Threads, files, logging, stats


async def test_plain_def_handler_runs_in_a_worker_thread() -> None:
    def handler(request: Request) -> Response:
        return Response(threading.current_thread().name)

    async with serve_for_test(handler) as client:
        response = await client.get("/")
        assert response.body.startswith(b"tinystream-worker")


async def test_file_response(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    (tmp_path / "data.bin").write_bytes(data)

    async def handler(request: Request) -> FileResponse:
        return FileResponse(tmp_path / request.path.lstrip("/"), filename="résumé.bin")

    async with serve_for_test(handler) as client:
        response = await client.get("/data.bin")
        assert response.body == data
        assert response.headers["content-length"] == str(len(data))
        assert "last-modified" in response.headers
        assert "filename*=UTF-8''r%C3%A9sum%C3%A9.bin" in response.headers["content-disposition"]
        assert (await client.get("/missing.bin")).status == 404


async def test_access_log_line_when_the_response_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinystream.access")
    async with serve_for_test(hello) as client:
        await client.get("/logged?x=1")
    [line] = [r.getMessage() for r in caplog.records if r.name == "tinystream.access"]
    assert '"GET /logged?x=1 HTTP/1.1" 200 6 ' in line and line.endswith(" complete")


async def test_access_log_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinystream.access")
    async with serve_for_test(hello, access_log=False) as client:
        await client.get("/")
    assert not [r for r in caplog.records if r.name == "tinystream.access"]


async def test_stats_count_streams() -> None:
    probe = Probe()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(probe.idle())

    async with serve_for_test(handler) as client:
        async with client.stream("GET", "/") as response:
            await wait(probe.started)
            stats = await client.server.wait_stats(lambda s: s.streams == 1, TIMEOUT)
            assert stats.connections == 1
            response.abort()
        await client.server.wait_stats(lambda s: s.streams == 0 and s.connections == 0, TIMEOUT)


async def test_client_connection_can_open_directly() -> None:
    async with serve_for_test(hello) as client:
        conn = await ClientConnection.open("127.0.0.1", client.port)
        assert (await conn.request("GET", "/")).status == 200
        await conn.close()


async def test_with_half_close_a_client_that_closes_is_noticed_at_the_next_write() -> None:
    """A FIN could be a half-close; the write after it tells, and the producer stops."""
    probe = Probe()
    tick = asyncio.Event()

    async def handler(request: Request) -> StreamingResponse:
        async def ticks() -> AsyncIterator[bytes]:
            try:
                yield b"first\n"
                await tick.wait()
                yield b"second\n"
                await asyncio.Event().wait()
            finally:
                probe.finished.set()

        return StreamingResponse(ticks())

    async with serve_for_test(handler, half_close=True) as client:
        async with client.stream("GET", "/") as response:
            async for _ in response.aiter_bytes():
                break
            await response.close()  # FIN, no reset
            tick.set()  # the next write reaches a closed socket
            await wait(probe.finished, 2.0)  # well before the shutdown at the end of the block


async def test_a_thousand_malformed_requests_raise_no_warning_storm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Client mistakes are logged at DEBUG/INFO only: a peer cannot flood the log."""
    caplog.set_level(logging.DEBUG, logger="tinystream")

    async def bad_client(port: int, garbage: bytes) -> bytes:
        conn = await ClientConnection.open("127.0.0.1", port)
        try:
            await conn.send_raw(garbage)
            return await conn.read_raw_until_close()
        finally:
            await conn.close()

    garbage = [
        b"\x00\xff garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    async with serve_for_test(hello) as client:
        for batch in range(10):
            answers = await asyncio.gather(
                *(bad_client(client.port, garbage[(batch + i) % 3]) for i in range(100))
            )
            assert all(answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 505")) for answer in answers)
        assert (await client.get("/")).status == 200
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []
    refusals = [
        r for r in caplog.records if r.name == "tinystream.access" and " error" in r.getMessage()
    ]
    assert len(refusals) == 1000  # each one still leaves its access-log line


async def test_a_stalled_client_is_reset_so_the_kernel_frees_its_buffers() -> None:
    """A plain close toward a zero window would leave an orphaned socket probing
    for minutes; the server resets the connection instead."""
    probe = Probe()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(probe.endless(b"s" * 16384))

    async with serve_for_test(handler, write_stall_timeout=0.3) as client:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", client.port))
            await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await wait(probe.finished)  # cut off, and never read by us
            await client.server.wait_stats(lambda s: s.connections == 0, TIMEOUT)
            # On loopback the reset is delivered within the server's close(): our
            # socket is already closed (TCP_CLOSE, 7) though it holds unread data.
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 7
        finally:
            sock.close()


async def test_head_closes_a_sync_iterator_it_never_pulled() -> None:
    closed = threading.Event()

    class Rows:
        def __iter__(self) -> Rows:
            return self

        def __next__(self) -> bytes:
            return b"row\n"

        def close(self) -> None:
            closed.set()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(Rows())

    async with serve_for_test(handler) as client:
        response = await client.request("HEAD", "/")
        assert response.status == 200 and response.body == b""
        assert await asyncio.to_thread(closed.wait, TIMEOUT)


async def test_a_refused_upload_is_answered_with_connection_close_and_no_reset() -> None:
    """413 for a chunked body over the limit: the client reads it, then a clean end."""

    async def handler(request: Request) -> Response:
        await request.body()
        return Response("never\n")

    async with serve_for_test(handler, max_body_size=100_000) as client:
        conn = await client.connect()
        await conn.send_raw(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % 16384 + b"a" * 16384 + b"\r\n"
        for _ in range(8):  # 128 KiB: over the limit
            await conn.send_raw(chunk)
        [response] = parse_responses(await conn.read_raw_until_close())
        assert response["status"] == 413
        assert response["headers"][b"connection"] == b"close"
        assert not conn.was_reset
        conn.abort()


async def test_a_refusal_after_the_head_is_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tinystream.access")
    finished = asyncio.Event()

    async def echo(request: Request) -> AsyncIterator[bytes]:
        try:
            yield b"started\n"
            async for chunk in request.stream():
                yield chunk
        finally:
            finished.set()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(echo(request))

    async with serve_for_test(handler) as client:
        conn = await client.connect()
        await conn.send_raw(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        assert b"started" in await conn.read_raw()
        await conn.send_raw(b"5 \r\nhello\r\n")  # a bad chunk-size line, mid-response
        await wait(finished)
        stats = await client.server.wait_stats(
            lambda s: s.connections == 0 and s.requests_served == 1, TIMEOUT
        )
        assert stats.outcomes == {"error": 1}
        conn.abort()
    assert any(r.getMessage().endswith(" error") for r in caplog.records)
