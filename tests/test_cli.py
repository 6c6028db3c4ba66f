"""``python -m tinystream``: real processes, real signals, real sockets."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tinystream.testing import ClientConnection

from . import processes
from .helpers import make_certificate

ROOT = Path(__file__).resolve().parent.parent
#: Bound on each wait for the CLI (startup, a response, exiting): a fresh
#: interpreter importing tinystream takes seconds on a loaded machine.
TIMEOUT = 30.0  # seconds
#: Where the tinystream under test is (it need not be installed).
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
URL = re.compile(rb"tinystream listening on (https?)://127\.0\.0\.1:(\d+)")

APP = """
import asyncio
from tinystream import Response, StreamingResponse

async def app(request):
    if request.path == "/forever":
        async def forever():
            while True:
                yield b"tick\\n"
                await asyncio.sleep(0.05)
        return StreamingResponse(forever())
    import os
    return Response(str(os.getpid()))

not_callable = 42
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(APP)
    return tmp_path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinystream", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=ENV,
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:app", "module 'no_such_module' not found"),
        ("cliapp:missing", "has no attribute 'missing'"),
        ("cliapp:not_callable", "is not callable"),
        ("cliapp", "MODULE:ATTR"),
    ],
)
def test_bad_handler_spec_is_one_line_and_exit_2(app_dir: Path, spec: str, message: str) -> None:
    result = run_cli(spec, "--port", "0", cwd=app_dir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("tinystream: error:")


@asynccontextmanager
async def serving(
    app_dir: Path, *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, int]]:
    # Killed at once if a test leaves it running: its process group, so --workers too.
    async with processes.running(
        sys.executable,
        "-m",
        "tinystream",
        *args,
        stop_signal=signal.SIGKILL,
        cwd=app_dir,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env=ENV,
    ) as process:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), TIMEOUT)
        match = URL.search(line)
        assert match, line
        yield process, match.group(1).decode(), int(match.group(2))


async def get(port: int, path: str = "/") -> bytes:
    conn = await ClientConnection.open("127.0.0.1", port)
    try:
        return (await conn.request("GET", path)).body
    finally:
        await conn.close()


async def test_serves_and_stops_gracefully_on_sigterm(app_dir: Path) -> None:
    async with serving(app_dir, "cliapp:app", "--port", "0") as (process, _, port):
        assert (await get(port)).isdigit()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


async def open_endless_stream(port: int) -> ClientConnection:
    """A connection with /forever streaming on it, its first chunk already read."""
    conn = await ClientConnection.open("127.0.0.1", port)
    response = await conn.start("GET", "/forever")
    async for _ in response.aiter_bytes():
        break
    return conn


async def test_open_stream_does_not_hang_shutdown(app_dir: Path) -> None:
    async with serving(app_dir, "cliapp:app", "--port", "0", "--graceful-timeout", "0.5") as (
        process,
        _,
        port,
    ):
        conn = await open_endless_stream(port)
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
        await conn.close()


async def test_second_signal_exits_at_once(app_dir: Path) -> None:
    async with serving(app_dir, "cliapp:app", "--port", "0", "--graceful-timeout", "60") as (
        process,
        _,
        port,
    ):
        conn = await open_endless_stream(port)
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        # Wait until the first signal was taken, then send the second.
        while b"shutting down" not in await asyncio.wait_for(process.stderr.readline(), TIMEOUT):
            pass
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 128 + signal.SIGINT
        await conn.close()


async def test_workers_share_the_port(app_dir: Path) -> None:
    async with serving(app_dir, "cliapp:app", "--port", "0", "--workers", "2") as (
        process,
        _,
        port,
    ):
        pids = set()
        for _ in range(40):
            pids.add(await get(port))
            if len(pids) == 2:
                break
        assert len(pids) == 2, "both workers should answer"
        assert str(process.pid).encode() not in pids
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


async def test_unix_socket(app_dir: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "ts.sock")
    async with processes.running(
        sys.executable,
        "-m",
        "tinystream",
        "cliapp:app",
        "--uds",
        path,
        stop_signal=signal.SIGKILL,
        cwd=app_dir,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    ) as process:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), TIMEOUT)
        assert f"unix:{path}".encode() in line
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
        assert raw.startswith(b"HTTP/1.1 200 OK")
        writer.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


async def test_tls(app_dir: Path, tmp_path: Path) -> None:
    cert, key = await asyncio.to_thread(make_certificate, tmp_path)
    args = ("cliapp:app", "--port", "0", "--certfile", str(cert), "--keyfile", str(key))
    async with serving(app_dir, *args) as (process, scheme, port):
        assert scheme == "https"
        context = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"tick\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"chunked" in head
        writer.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


def test_port_in_use_fails_clearly(app_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("cliapp:app", "--port", str(taken.getsockname()[1]), cwd=app_dir)
    assert result.returncode != 0
    assert "address already in use" in result.stderr.lower()
