"""Embedding: start_server, serve and run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

import tinystream
from tinystream import Request, Response
from tinystream.testing import ClientConnection

from . import processes

ROOT = Path(__file__).resolve().parent.parent


async def hello(request: Request) -> Response:
    return Response("hi")


async def test_start_server_returns_bound_and_closes_gracefully() -> None:
    server = await tinystream.start_server(hello, port=0)
    assert server.url == f"http://127.0.0.1:{server.port}"
    conn = await ClientConnection.open("127.0.0.1", server.port)
    assert (await conn.request("GET", "/")).body == b"hi"
    await server.close()
    await server.close()  # a second call is harmless
    assert await conn.read_raw_until_close() == b""  # idle keep-alive closed


async def test_serve_runs_until_cancelled() -> None:
    # A socket already listening: connections wait in its backlog until serve()
    # accepts them, so the test needs no signal that the server is up.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    task = asyncio.ensure_future(tinystream.serve(hello, sock=sock))
    conn = await ClientConnection.open("127.0.0.1", sock.getsockname()[1])
    assert (await conn.request("GET", "/")).body == b"hi"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await conn.read_raw_until_close() == b""  # shut down gracefully


async def test_bad_options_fail_clearly() -> None:
    with pytest.raises(TypeError, match="unknown server option"):
        await tinystream.start_server(hello, port=0, keepalive=3)
    with pytest.raises(ValueError, match="header_timeout"):
        await tinystream.start_server(hello, port=0, header_timeout=0)
    with pytest.raises(TypeError, match="callable"):
        await tinystream.start_server("nope", port=0)  # type: ignore[arg-type]


async def test_run_blocks_until_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "embedded.py"
    script.write_text(
        "import tinystream\n"
        "from tinystream import Response\n"
        "async def app(request):\n"
        "    return Response('embedded')\n"
        "tinystream.run(app, port=0)\n"
        "print('run returned', flush=True)\n"
    )
    async with processes.running(
        sys.executable,
        str(script),
        stop_signal=signal.SIGKILL,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as process:
        assert process.stderr is not None and process.stdout is not None
        # 30 s: a fresh interpreter importing tinystream, on a loaded machine.
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        match = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        conn = await ClientConnection.open("127.0.0.1", int(match.group(1)))
        assert (await conn.request("GET", "/")).body == b"embedded"
        await conn.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert b"run returned" in await process.stdout.read()
