"""ASGI applications on tinystream (``tinystream.asgi``): real Starlette, sse-starlette and
FastAPI apps over real sockets, each guarantee of issue 14 proven by one test or more."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tinystream import ClientDisconnected
from tinystream.asgi import ASGIHandler, is_asgi_app
from tinystream.testing import serve_for_test

from . import asgi_apps
from .helpers import wait
from .test_server import small_buffer_listener

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0
STARTUP_TIMEOUT = 60.0  # a CLI process's start-up (imports), on a loaded machine
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# Detection and the scope


def test_asgi_apps_are_told_from_native_handlers() -> None:
    async def native(request: Any) -> None: ...

    async def raw(scope: Any, receive: Any, send: Any) -> None: ...

    assert is_asgi_app(asgi_apps.starlette_app) and is_asgi_app(asgi_apps.fastapi_app)
    assert is_asgi_app(raw)
    assert not is_asgi_app(native) and not is_asgi_app(42)


async def test_scope_is_complete_and_correct() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["db"] = "connected"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve_for_test(app, root_path="/api") as client:
        headers = [("X-One", "1"), ("x-two", "a"), ("X-Two", "b")]
        async with client.connection() as conn:
            await conn.request("GET", "/caf%C3%A9/x%2Fy?q=%20&r=2", headers=headers)
        await client.request("GET", "/old", http_version="1.0")
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1" and scopes[1]["http_version"] == "1.0"
    assert scope["method"] == "GET" and scope["scheme"] == "http"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/café/x/y"  # decoded, root_path prefixed (as uvicorn)
    assert scope["raw_path"] == b"/api/caf%C3%A9/x%2Fy"
    assert scope["query_string"] == b"q=%20&r=2"
    assert scope["headers"] == [  # as sent, in order, repeated fields kept (h11 lower-cases)
        (b"host", b"127.0.0.1"),
        (b"x-one", b"1"),
        (b"x-two", b"a"),
        (b"x-two", b"b"),
    ]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ("127.0.0.1", client.port)
    assert scope["state"] == {"db": "connected"}
    assert scope["extensions"] == {}


# Client leaves


@pytest.mark.parametrize("how", ["fin", "reset"])
@pytest.mark.parametrize("app", ["starlette", "fastapi"])
async def test_client_leaving_closes_a_waiting_generator_within_50ms(
    how: str, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    """sse-starlette's generator awaits its next event; the client leaves; its finally
    runs at once (the app task is cancelled), and nothing is logged as an error."""
    record = asgi_apps.reset()
    served = asgi_apps.starlette_app if app == "starlette" else asgi_apps.fastapi_app
    async with serve_for_test(served) as client:
        async with client.stream("GET", "/events") as response:
            assert response.headers.get("content-type", "").startswith("text/event-stream")
            async for event in response.aiter_events():
                assert event.data == "first"
                break
            await wait(record.started)
            left_at = asyncio.get_running_loop().time()
            if how == "reset":
                response.abort()
            else:
                await response.close()
            await wait(record.finished)
        assert record.finished_at[0] - left_at < 0.05
        stats = await client.server.wait_stats(
            lambda s: s.connections == 0 and s.requests_served == 1, TIMEOUT
        )
        assert stats.outcomes.get("client_gone") == 1
    assert errors(caplog) == []


@pytest.mark.parametrize("app", ["starlette", "fastapi"])
async def test_generator_that_never_awaits_neither_starves_others_nor_outlives_its_client(
    app: str, caplog: pytest.LogCaptureFixture
) -> None:
    record = asgi_apps.reset()
    served = asgi_apps.starlette_app if app == "starlette" else asgi_apps.fastapi_app
    async with serve_for_test(served) as client:
        async with client.stream("GET", "/busy") as response:
            async for _ in response.aiter_bytes():
                break
            # While it produces as fast as it can, another client is served.
            other = await client.get("/")
            assert other.status == 200
            response.abort()
            # Parked at `yield` while Starlette waits in send(): closed all the same.
            await wait(record.finished)
    assert errors(caplog) == []


async def test_receive_says_disconnect_at_once_and_send_then_raises_an_oserror(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # lifespan auto: served all the same
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        assert (await receive())["type"] == "http.request"  # the (empty) request body
        try:
            seen["message"] = await receive()
        finally:
            # Cancelled with it or not, a send afterwards raises (spec 2.4).
            try:
                await send({"type": "http.response.body", "body": b"more", "more_body": True})
            except OSError as exc:
                seen["error"] = exc
            done.set()

    async with serve_for_test(app) as client:
        async with client.stream("GET", "/") as response:
            async for _ in response.aiter_bytes():
                break
            await response.close()
        await wait(done)
    assert isinstance(seen["error"], ClientDisconnected)
    assert seen.get("message", {"type": "http.disconnect"}) == {"type": "http.disconnect"}
    assert errors(caplog) == []


async def test_a_receive_waiting_when_the_response_completes_gets_disconnect() -> None:
    """A disconnect listener (Starlette's, or the app's own) is not left waiting."""
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()  # the (empty) request body
        listener = asyncio.ensure_future(receive())
        await asyncio.sleep(0)  # the listener is waiting in receive() now
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        seen["message"] = await asyncio.wait_for(listener, TIMEOUT)
        done.set()

    async with serve_for_test(app, lifespan="off") as client:
        assert (await client.get("/")).body == b"ok"
        await wait(done)
    assert seen["message"] == {"type": "http.disconnect"}


# Slow client


async def test_slow_client_pauses_the_app_in_send() -> None:
    record = asgi_apps.reset()
    high = 16 * 1024
    async with serve_for_test(
        asgi_apps.starlette_app,
        sock=small_buffer_listener(),
        write_high_water=high,
        write_low_water=4096,
    ) as client:
        async with client.stream("GET", "/busy", recv_buffer=4096) as response:
            stats = await client.server.wait_stats(lambda s: s.paused_writers == 1, TIMEOUT)
            chunk = len(asgi_apps.CHUNK)
            assert stats.buffered_bytes <= high + chunk + 16
            pulled = record.pulled
            # What was pulled: the transport buffer, the kernel's few KiB, one chunk
            # in the hand-off and the one the generator holds. Never more.
            assert pulled * chunk < high + 4 * chunk + 200 * 1024
            for _ in range(20):
                await asyncio.sleep(0)  # the app gets every chance to run ahead: it cannot
            assert record.pulled <= pulled + 1
            received = 0
            async for data in response.aiter_bytes(4096):
                received += len(data)
                if received > 1024 * 1024:
                    break
            assert record.pulled > pulled
            response.abort()
        await wait(record.finished)


async def test_small_chunks_are_bounded_by_high_water_plus_one_chunk() -> None:
    """Small chunks sent in one loop iteration leave in one write, yet the transport
    holds at most the high-water mark plus one chunk, and the app waits in send()."""
    chunk = 1000  # not a divisor of the high-water mark: the overflowing chunk is a real one
    returned = 0  # body bytes whose send() returned
    framing = 16  # a chunk's size line and CRLFs

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        nonlocal returned
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:  # never awaits anything but send()
            await send({"type": "http.response.body", "body": b"e" * chunk, "more_body": True})
            returned += chunk

    high = 16 * 1024
    async with serve_for_test(
        app, sock=small_buffer_listener(), write_high_water=high, write_low_water=4096
    ) as client:
        async with client.stream("GET", "/", recv_buffer=4096) as response:
            stats = await client.server.wait_stats(lambda s: s.paused_writers == 1, TIMEOUT)
            assert stats.buffered_bytes <= high + chunk + framing
            for _ in range(20):
                await asyncio.sleep(0)  # the app gets every chance to run ahead: it cannot
            held = returned
            stats = await client.server.wait_stats(lambda s: s.paused_writers == 1, TIMEOUT)
            assert stats.buffered_bytes <= high + chunk + framing
            for _ in range(20):
                await asyncio.sleep(0)
            assert returned == held  # paused: not one more byte was taken from the app
            response.abort()


async def test_client_that_stops_reading_is_cut_off_and_send_raises() -> None:
    outcome: dict[str, Any] = {}
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except BaseException as exc:
            outcome["error"] = exc
            raise
        finally:
            done.set()

    async with serve_for_test(app, sock=small_buffer_listener(), write_stall_timeout=0.3) as client:
        async with client.stream("GET", "/", recv_buffer=4096):
            await wait(done)  # we never read
        stats = await client.server.wait_stats(
            lambda s: s.connections == 0 and s.requests_served == 1, TIMEOUT
        )
        assert stats.outcomes == {"stalled": 1}
    assert isinstance(outcome["error"], (OSError, asyncio.CancelledError))


# Shutdown


async def test_shutdown_ends_three_event_streams_and_lets_plain_responses_finish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tinystream.access")
    record = asgi_apps.reset()
    async with serve_for_test(asgi_apps.fastapi_app, graceful_timeout=3) as client:
        assert record.lifespan == ["startup"]
        streams = []
        for _ in range(3):
            conn = await client.connect()
            response = await conn.start("GET", "/events")
            async for _ in response.aiter_bytes():
                break
            streams.append((conn, response))
        assert (await client.get("/")).json() == {"greeting": "hello from lifespan"}
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(client.server.close(), TIMEOUT)
        assert loop.time() - started < 1.0  # event streams end at once, not after the grace
        assert len(record.finished_at) == 3
        assert record.lifespan == ["startup", "shutdown"]
        for conn, response in streams:
            await response.read()
            assert response.complete  # a clean end: the browser reconnects
            await conn.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "tinystream.access"]
    events = [line for line in lines if "GET /events" in line]
    assert len(events) == 3 and all(line.endswith(" shutdown") for line in events)  # as native


async def test_shutdown_gives_disconnect_to_receive_and_cancels_the_rest_after_the_grace() -> None:
    told = asyncio.Event()
    plain_done = asyncio.Event()
    gate = asyncio.Event()
    stuck_finished = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/listen":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            message = await receive()
            await receive()  # the request body was read: the next event is the disconnect
            assert message["type"] == "http.request"
            told.set()
            await send({"type": "http.response.body", "body": b"bye"})
        elif scope["path"] == "/plain":
            await gate.wait()  # still working when the shutdown begins
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})
            plain_done.set()
        else:  # a download that ignores the shutdown
            await send({"type": "http.response.start", "status": 200, "headers": []})
            try:
                while True:
                    await send({"type": "http.response.body", "body": b"z", "more_body": True})
                    await asyncio.sleep(0.01)
            finally:
                stuck_finished.set()

    async with serve_for_test(app, graceful_timeout=0.5) as client:
        listen = await client.connect()
        listening = await listen.start("GET", "/listen")
        async for _ in listening.aiter_bytes():
            break
        stuck = await client.connect()
        stuck_response = await stuck.start("GET", "/stuck")
        async for _ in stuck_response.aiter_bytes():
            break
        plain = await client.connect()
        await plain.send_raw(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        closing = asyncio.ensure_future(client.server.close())
        await wait(told)
        gate.set()
        await wait(plain_done)
        await asyncio.wait_for(closing, TIMEOUT)
        await wait(stuck_finished)
        assert (await listening.read()).endswith(b"bye") and listening.complete
        assert b"done" in await plain.read_raw_until_close()
        await stuck_response.read()
        assert not stuck_response.complete  # cut when the grace period ended
        for conn in (listen, stuck, plain):
            await conn.close()


async def test_cli_fastapi_with_three_open_streams_exits_on_sigterm_within_the_grace() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tinystream",
        "tests.asgi_apps:fastapi_app",
        "--port",
        "0",
        "--graceful-timeout",
        "2",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stderr is not None
    try:
        port = 0
        seen = b""
        while not port:
            # Start-up imports FastAPI and pydantic: on a loaded CI machine that is
            # not bounded by TIMEOUT (the wait is for the line, not a fixed time).
            line = await asyncio.wait_for(process.stderr.readline(), STARTUP_TIMEOUT)
            seen += line
            assert line, f"the server exited before listening: {seen.decode(errors='replace')}"
            if b"listening on" in line:
                port = int(line.rsplit(b":", 1)[1])
        from tinystream.testing import ClientConnection

        conns = []
        for _ in range(3):
            conn = await ClientConnection.open("127.0.0.1", port)
            response = await conn.start("GET", "/events")
            async for _ in response.aiter_bytes():
                break
            conns.append(conn)
        loop = asyncio.get_running_loop()
        started = loop.time()
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 2 + 1 + TIMEOUT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0, rest.decode(errors="replace")
        assert loop.time() - started < 2 + 1
        assert rest.count(b"generator finally") == 3
        assert b"lifespan shutdown" in rest
        for conn in conns:
            await conn.close()
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), TIMEOUT)


# Errors


async def test_errors_before_and_after_the_start(caplog: pytest.LogCaptureFixture) -> None:
    delivered = asyncio.Event()  # the client has read the first chunk: the head is out

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/before":
            raise ValueError("boom before")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        if path in ("/after", "/second-start"):
            await delivered.wait()
        if path == "/after":
            raise ValueError("boom after")
        if path == "/second-start":
            await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if path == "/body-after-end":
            await send({"type": "http.response.body", "body": b"late"})

    async with serve_for_test(app) as client:
        response = await client.get("/before")
        assert response.status == 500 and b"boom" not in response.body
        for path in ("/after", "/second-start"):
            delivered.clear()
            async with client.stream("GET", path) as streamed:
                assert streamed.status == 200
                body = b""
                async for data in streamed.aiter_bytes():
                    body += data
                    delivered.set()
                assert body == b"partial"
                assert not streamed.complete and not streamed.was_reset  # FIN, truncated
        response = await client.get("/body-after-end")  # the body was complete: kept
        assert response.body == b"partial"
        await client.server.wait_stats(lambda s: s.connections == 0, TIMEOUT)
    logged = "\n".join(
        r.getMessage() + str(r.exc_info[1] if r.exc_info else "")
        for r in caplog.records
        if r.levelno >= logging.ERROR
    )
    assert "boom before" in logged and "boom after" in logged
    assert "http.response.start twice" in logged
    assert "after more_body=False" in logged


async def test_invalid_header_or_wrong_content_length_never_corrupts_a_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivered = asyncio.Event()  # the client has read the first chunk: the head is out

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/bad-header":
            headers = [(b"x-injected", b"a\r\nSet-Cookie: evil=1")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            return
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if path == "/whole-but-short":
            await send({"type": "http.response.body", "body": b"12345"})
            return
        await send({"type": "http.response.body", "body": b"123456", "more_body": True})
        await delivered.wait()
        if path == "/long":
            await send({"type": "http.response.body", "body": b"123456"})
        else:  # short
            await send({"type": "http.response.body", "body": b""})

    async with serve_for_test(app) as client:
        response = await client.get("/bad-header")
        assert response.status == 500 and "set-cookie" not in response.headers
        response = await client.get("/whole-but-short")
        assert response.status == 500
        for path in ("/long", "/short"):
            delivered.clear()
            async with client.stream("GET", path) as streamed:
                assert streamed.headers.get("content-length") == "10"
                body = b""
                async for data in streamed.aiter_bytes():
                    body += data
                    delivered.set()
                assert body == b"123456"
                assert not streamed.complete  # not hung: the connection was closed
    logged = "\n".join(
        str(r.exc_info[1]) if r.exc_info else r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
    )
    assert "invalid header" in logged
    assert logged.count("Content-Length") >= 3


# Request bodies


async def test_request_body_arrives_in_events_with_more_body() -> None:
    sizes: list[tuple[int, bool]] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            sizes.append((len(message["body"]), message["more_body"]))
            if not message["more_body"]:
                break
        total = sum(size for size, _ in sizes)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    async with serve_for_test(app) as client:
        response = await client.post("/", body=[b"a" * 1000, b"b" * 2000, b"c" * 3000])
        assert response.body == b"6000"
        assert sizes[-1] == (0, False) and all(more for _, more in sizes[:-1])


async def test_request_body_is_flow_controlled_and_100_continue_waits_for_receive() -> None:
    entered = asyncio.Event()
    gate = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        entered.set()
        await gate.wait()
        total = 0
        while True:
            message = await receive()
            total += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    async with serve_for_test(app, read_high_water=16 * 1024, max_body_size=None) as client:
        # 100-continue: only once the app asks for the body.
        conn = await client.connect()
        await conn.send_raw(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        await wait(entered)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not conn._reader._buffer  # nothing yet, not even "100 Continue"
        gate.set()
        assert (await conn.read_raw()).startswith(b"HTTP/1.1 100 ")
        await conn.send_raw(b"hello")
        assert (await conn.read_raw_until_close(200)).endswith(b"5")
        await conn.close()

        # Flow control: while the app does not call receive(), the socket is paused.
        entered.clear()
        gate.clear()
        body = b"u" * (32 * 1024 * 1024)  # more than loopback's kernel buffers hold
        conn = await client.connect()
        sending = asyncio.ensure_future(
            conn.send_raw(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
        )
        await wait(entered)
        (server_conn,) = client.server._ctx.connections
        for _ in range(10_000):  # loop iterations, not time: both ends run in this loop
            if server_conn.transport is not None and not server_conn.transport.is_reading():
                break
            await asyncio.sleep(0)
        assert not server_conn.transport.is_reading()
        assert not sending.done()  # the client is held back: nothing buffered without bound
        gate.set()
        await asyncio.wait_for(sending, TIMEOUT)
        assert (await conn.read_raw_until_close(1000)).endswith(str(len(body)).encode())
        await conn.close()


async def test_body_over_the_limit_gives_413() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    async with serve_for_test(app, max_body_size=1000) as client:
        response = await client.post("/", body=[b"x" * 600, b"y" * 600])
        assert response.status == 413


# Lifespan


async def test_lifespan_runs_before_accepting_and_shuts_down_after_the_last_connection() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await gate.wait()
            order.append("startup")
            await send({"type": "lifespan.startup.complete"})
            await receive()
            order.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        order.append("request")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.Event().wait()
        finally:
            order.append("request ended")

    from tinystream import start_server

    starting = asyncio.ensure_future(start_server(app, port=0, graceful_timeout=0.2))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not starting.done() and order == []
    gate.set()
    server = await asyncio.wait_for(starting, TIMEOUT)
    try:
        from tinystream.testing import TestClient

        client = TestClient(server)
        conn = await client.connect()
        response = await conn.start("GET", "/")
        async for _ in response.aiter_bytes():
            break
    finally:
        await server.close()
    await conn.close()
    assert order == ["startup", "request", "request ended", "shutdown"]


async def test_app_without_lifespan_is_served_and_lifespan_on_requires_it() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body"})

    async with serve_for_test(app) as client:
        assert (await client.get("/")).status == 204
    async with serve_for_test(app, lifespan="off") as client:
        assert (await client.get("/")).status == 204
    from tinystream.asgi import LifespanFailed

    with pytest.raises(LifespanFailed, match="AssertionError"):
        async with serve_for_test(app, lifespan="on"):
            pass


def test_cli_exits_non_zero_with_the_apps_message_when_startup_fails() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "tinystream", "tests.asgi_apps:failing_app", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 3
    assert "application startup failed" in result.stderr
    assert "the database is not reachable" in result.stderr


# Wire behaviour: HTTP/1.0, HEAD, Content-Length, access log, WebSocket


async def test_http10_head_content_length_and_access_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinystream.access")
    async with serve_for_test(asgi_apps.starlette_app) as client:
        async with client.connection() as conn:
            response = await conn.start("GET", "/busy", http_version="1.0")
            assert "transfer-encoding" not in response.headers
            assert "content-length" not in response.headers
            async for _ in response.aiter_bytes():
                break
        head = await client.request("HEAD", "/sized")
        assert head.status == 200 and head.body == b""
        assert head.headers.get("content-length") == "10"
        sized = await client.get("/sized")
        assert sized.body == b"0123456789" and sized.headers.get("content-length") == "10"
        await client.server.wait_stats(lambda s: s.connections == 0, TIMEOUT)
    lines = [r.getMessage() for r in caplog.records if r.name == "tinystream.access"]
    assert any('"HEAD /sized HTTP/1.1" 200 0' in line and "complete" in line for line in lines)
    assert any('"GET /sized HTTP/1.1" 200 10' in line for line in lines)
    assert any('"GET /busy HTTP/1.0" 200' in line and "client_gone" in line for line in lines)


async def test_the_apps_own_server_and_date_fields_win() -> None:
    """An app that sends ``Server`` or ``Date`` gets exactly its own; one that does
    not gets the server's, as a native handler does."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"server", b"my-app"), (b"Date", b"Thu, 01 Jan 2099 00:00:00 GMT")]
        if scope["path"] == "/server":
            headers = headers[:1]
        elif scope["path"] == "/none":
            headers = []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve_for_test(app) as client:
        both = await client.get("/both")
        assert both.headers.get_all("server") == ["my-app"]
        assert both.headers.get_all("date") == ["Thu, 01 Jan 2099 00:00:00 GMT"]
        server_only = await client.get("/server")
        assert server_only.headers.get_all("server") == ["my-app"]
        assert len(server_only.headers.get_all("date")) == 1
        assert server_only.headers.get("date") != "Thu, 01 Jan 2099 00:00:00 GMT"
        none = await client.get("/none")
        assert none.headers.get_all("server") == ["tinystream"]
        assert len(none.headers.get_all("date")) == 1


async def test_websocket_upgrade_gets_501_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    async with serve_for_test(asgi_apps.fastapi_app) as client:
        for _ in range(2):
            response = await client.get("/ws", headers=upgrade)
            assert response.status == 501 and b"WebSocket" in response.body
    warnings = [r for r in caplog.records if "WebSocket" in r.getMessage()]
    assert len(warnings) == 1


async def test_asgi_handler_is_a_native_handler() -> None:
    handler = ASGIHandler(asgi_apps.starlette_app, lifespan="off")
    async with serve_for_test(handler) as client:
        assert (await client.get("/")).body == b"hello, world\n"


# One task per request: the response goes out as the app sends it


async def test_a_response_is_sent_before_the_apps_background_work_ends() -> None:
    """Starlette runs background tasks after the last send(): the client has its
    response, and the next request on the connection is served, meanwhile."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    release, finished = asyncio.Event(), asyncio.Event()

    async def background() -> None:
        await release.wait()
        finished.set()

    async def slow_after(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse("sent first", background=BackgroundTask(background))

    async def quick(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse("next one")

    app = Starlette(routes=[Route("/", slow_after), Route("/quick", quick)])
    async with serve_for_test(app) as client, client.connection() as conn:
        first = await asyncio.wait_for(conn.request("GET", "/"), TIMEOUT)
        assert first.status == 200 and first.body == b"sent first"
        assert not finished.is_set()  # its background work still waits
        second = await asyncio.wait_for(conn.request("GET", "/quick"), TIMEOUT)
        assert second.body == b"next one"
        release.set()
        await asyncio.wait_for(finished.wait(), TIMEOUT)


async def test_a_slow_first_chunk_does_not_hold_back_the_head() -> None:
    """A streamed body's head goes out first_item_wait after http.response.start
    when the first chunk is slow (an LLM's first token), as for native streams."""
    first_chunk = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await first_chunk.wait()
        await send({"type": "http.response.body", "body": b"token", "more_body": False})

    async with serve_for_test(app, first_item_wait=0.05) as client:
        async with client.stream("GET", "/") as response:
            assert response.status == 200  # the head, while the app still waits
            assert response.headers.get("transfer-encoding") == "chunked"
            first_chunk.set()
            assert await asyncio.wait_for(response.read(), TIMEOUT) == b"token"


async def test_an_asgi_app_behind_a_router_route_is_served() -> None:
    from tinystream import Router

    router = Router()
    router.add("/", ASGIHandler(asgi_apps.starlette_app, lifespan="off"))
    async with serve_for_test(router) as client:
        response = await client.get("/")
        assert response.status == 200 and response.body == b"hello, world\n"
        assert (await client.get("/elsewhere")).status == 404  # the router's own


# What a review of the one-task design found (each failed before its fix)


async def test_a_length_framed_stream_is_whole_when_the_client_half_closes_at_once() -> None:
    """The last small chunk is held for the end of the loop iteration; the client's
    FIN read in the same iteration must not lose it."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"56789"})

    async with serve_for_test(app, half_close=True) as client:
        for _ in range(5):
            async with client.connection() as conn:
                await conn.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                conn.shutdown_write()
                raw = await asyncio.wait_for(conn.read_raw_until_close(), TIMEOUT)
                assert raw.endswith(b"\r\n\r\n0123456789")


async def test_an_app_that_swallows_its_cancellation_gets_nothing_written() -> None:
    """The client left before the start; the app ignores the cancellation and
    returns: no response of ours goes out (not a 200 the app never sent)."""
    waiting = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return  # swallowed (bad practice, but apps do it)

    async with serve_for_test(app) as client, client.connection() as conn:
        await conn.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(waiting.wait(), TIMEOUT)
        conn.shutdown_write()
        assert await asyncio.wait_for(conn.read_raw_until_close(), TIMEOUT) == b""


async def test_a_pipelined_request_does_not_inherit_the_previous_apps_context() -> None:
    import contextvars

    seen: list[str | None] = []
    mark: contextvars.ContextVar[str | None] = contextvars.ContextVar("mark", default=None)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen.append(mark.get())
        mark.set(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve_for_test(app) as client, client.connection() as conn:
        await conn.send_raw(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.server.wait_stats(lambda s: s.requests_served == 2, TIMEOUT)
    assert seen == [None, None]


async def test_nothing_the_app_starts_inherits_the_exchange() -> None:
    from tinystream._exchange import RUNNING

    inherited: list[object] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0, RUNNING.get()))
        inherited.append(await task)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve_for_test(app) as client:
        assert (await client.get("/")).status == 200
    assert inherited == [None]


async def test_background_work_after_the_response_does_not_delay_shutdown() -> None:
    from tinystream.serving import CLEANUP_TIMEOUT

    responded, cancelled = asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        responded.set()
        try:
            await asyncio.Event().wait()  # background work that never ends
        finally:
            cancelled.set()

    async with serve_for_test(app) as client:
        assert (await client.get("/")).body == b"ok"
        await asyncio.wait_for(responded.wait(), TIMEOUT)
        started = asyncio.get_running_loop().time()
    # (serve_for_test's exit is the graceful shutdown)
    assert cancelled.is_set()
    assert asyncio.get_running_loop().time() - started < CLEANUP_TIMEOUT


async def test_an_asgi_handler_wrapped_in_a_native_handler_is_served() -> None:
    asgi = ASGIHandler(asgi_apps.starlette_app, lifespan="off")

    async def with_auth(request: Any) -> Any:
        if request.headers.get("authorization") != "yes":
            from tinystream import Response

            return Response("no\n", status=401)
        return await asgi(request)

    async with serve_for_test(with_auth) as client:
        assert (await client.get("/")).status == 401
        allowed = await client.get("/", headers={"authorization": "yes"})
        assert allowed.status == 200 and allowed.body == b"hello, world\n"


async def test_unusual_but_valid_messages_are_answered() -> None:
    """A writable memoryview as a field value; HEAD answered without a body message;
    a 304 keeps the app's Content-Length."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/view":
            headers = [(b"x-view", memoryview(bytearray(b"seen")))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["path"] == "/head":
            headers = [(b"content-length", b"4")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        else:
            headers = [(b"content-length", b"4"), (b"etag", b'"v1"')]
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

    async with serve_for_test(app) as client:
        view = await client.get("/view")
        assert view.status == 200 and view.headers.get("x-view") == "seen"
        head = await client.request("HEAD", "/head")
        assert head.status == 200 and head.headers.get("content-length") == "4"
        not_modified = await client.get("/304")
        assert not_modified.status == 304 and not_modified.headers.get("content-length") == "4"
