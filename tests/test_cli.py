"""``python -m tinystream``: real processes, real signals, real sockets."""

from __future__ import annotations

import asyncio
import json
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

import tinystream
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
# ISO 8601 with milliseconds and the UTC offset.
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ")

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
        assert TIMESTAMP.match(line.decode()), line  # every line starts with its time
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


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The run's stderr is exactly one ``tinystream: error:`` line; return it."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinystream: error:"), result.stderr
    return lines[0]


@pytest.mark.parametrize("workers", ["1", "3"])
def test_port_in_use_is_refused_with_or_without_workers(app_dir: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("cliapp:app", "--port", port, "--workers", workers, cwd=app_dir)
    assert result.returncode == 1
    line = one_error_line(result)
    assert "address already in use" in line and f"127.0.0.1:{port}" in line


async def test_a_second_server_cannot_share_the_port_of_running_workers(app_dir: Path) -> None:
    """--workers used to bind with SO_REUSEPORT: an unrelated server on the same
    port came up and the kernel split the traffic between the two."""
    async with serving(app_dir, "cliapp:app", "--port", "0", "--workers", "2") as (
        process,
        _,
        port,
    ):
        for workers in ("1", "2"):
            second = await asyncio.to_thread(
                run_cli, "cliapp:app", "--port", str(port), "--workers", workers, cwd=app_dir
            )
            assert second.returncode == 1
            assert "address already in use" in one_error_line(second)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (
            ("--host", "no-such-host.invalid", "--port", "0"),
            1,
            "cannot resolve host 'no-such-host.invalid'",
        ),
        (("--port", "70000"), 2, "port 70000 is out of range"),
        (("--port", "http"), 2, "not a port number: 'http'"),
        (
            ("--port", "0", "--certfile", "missing.pem"),
            1,
            "cannot read certificate file 'missing.pem'",
        ),
        (("--port", "0", "--certfile", "cliapp.py"), 1, "cannot use certificate 'cliapp.py'"),
        (("--port", "0", "--workers", "0"), 2, "--workers must be >= 1"),
        (("--port", "0", "--reload", "--workers", "2"), 2, "cannot be combined with --workers"),
    ],
)
def test_start_up_errors_are_one_line(
    app_dir: Path, args: tuple[str, ...], status: int, message: str
) -> None:
    result = run_cli("cliapp:app", *args, cwd=app_dir)
    assert result.returncode == status
    assert message in one_error_line(result)


def test_unreadable_certificate_is_one_line(app_dir: Path) -> None:
    # A directory: unreadable as a file even for root (CI runs as root, for whom
    # a file without read permission is still readable).
    cert = app_dir / "cert.pem"
    cert.mkdir()
    result = run_cli("cliapp:app", "--port", "0", "--certfile", str(cert), cwd=app_dir)
    assert result.returncode == 1
    assert f"cannot read certificate file {str(cert)!r}: Is a directory" in one_error_line(result)


def test_module_that_raises_at_import_shows_only_its_own_frames(app_dir: Path) -> None:
    (app_dir / "helper.py").write_text("def setup():\n    raise RuntimeError('no config')\n")
    (app_dir / "broken.py").write_text("import helper\n\nhelper.setup()\napp = None\n")
    result = run_cli("broken:app", "--port", "0", cwd=app_dir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-2] == "RuntimeError: no config"
    assert (
        lines[-1] == "tinystream: error: importing 'broken' failed: RuntimeError (traceback above)"
    )
    frames = [line for line in lines if line.startswith("  File ")]
    assert len(frames) == 2, result.stderr  # broken.py, then helper.py: nothing else
    assert "broken.py" in frames[0] and "helper.py" in frames[1]


def test_help_shows_every_default_and_version_prints_the_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tinystream", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m tinystream ")
    listing = result.stdout.split("options:\n", 1)[1].split("\n\n", 1)[0]
    options = re.split(r"\n(?=  -)", listing)  # one entry per option, wrapped lines joined
    assert len(options) > 15
    for entry in options:
        if not entry.startswith(("  -h, --help", "  --version")):
            assert "(default: " in entry, entry
    for unit in ("--graceful-timeout S", "(default: 5.0 s)", "in bytes"):
        assert unit in result.stdout
    version = run_cli("--version", cwd=ROOT)
    assert (
        version.returncode == 0 and version.stdout.strip() == f"tinystream {tinystream.__version__}"
    )


def test_console_script_names_itself_tinystream(capsys: pytest.CaptureFixture[str]) -> None:
    from tinystream.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])  # the console script calls main() with the default prog
    assert capsys.readouterr().out.startswith("usage: tinystream ")


def test_version_matches_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{tinystream.__version__}"' in text


async def test_json_log_format_has_the_access_fields(app_dir: Path) -> None:
    async with serving(app_dir, "cliapp:app", "--port", "0") as (process, _, port):
        await get(port, "/?x=1")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), TIMEOUT)
    # The same again in JSON: every line one object.
    process = await processes.spawn(
        sys.executable, "-m", "tinystream", "cliapp:app", "--port", "0", "--log-format", "json",
        cwd=app_dir, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert process.stderr is not None
    try:
        first = json.loads(await asyncio.wait_for(process.stderr.readline(), TIMEOUT))
        assert set(first) == {"time", "level", "logger", "message"}
        assert TIMESTAMP.match(first["time"] + " ") and first["level"] == "INFO"
        port = int(first["message"].rsplit(":", 1)[1])
        await get(port, "/?x=1")
        access = json.loads(await asyncio.wait_for(process.stderr.readline(), TIMEOUT))
        assert access["logger"] == "tinystream.access"
        assert {k: access[k] for k in ("method", "target", "status", "outcome", "client")} == {
            "method": "GET",
            "target": "/?x=1",
            "status": 200,
            "outcome": "complete",
            "client": "127.0.0.1",
        }
        assert access["bytes"] > 0 and 0 <= access["duration"] < TIMEOUT
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), TIMEOUT)
        assert [json.loads(line)["message"] for line in rest.decode().splitlines()] == [
            "shutting down (signal again to exit at once)",
            "stopped",
        ]
    finally:
        await processes.stop(process, signal.SIGKILL)  # its whole group


async def read_until(process: asyncio.subprocess.Process, needle: bytes) -> bytes:
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), TIMEOUT)
        assert line, f"{needle!r} never came"
        if needle in line:
            return line


async def test_worker_lines_carry_the_worker_and_a_kill_is_named(app_dir: Path) -> None:
    async with serving(app_dir, "cliapp:app", "--port", "0", "--workers", "2") as (
        process,
        _,
        port,
    ):
        pid = int(await asyncio.wait_for(get(port), TIMEOUT))
        access = await read_until(process, b'"GET / HTTP/1.1" 200')
        assert re.search(rb"INFO +\[worker [12]\] 127\.0\.0\.1 ", access), access
        os.kill(pid, signal.SIGKILL)
        line = await read_until(process, b"restarting")
        assert f"(pid {pid}) killed by SIGKILL; restarting it".encode() in line, line
        assert (
            int(await asyncio.wait_for(get(port), TIMEOUT)) != pid
        )  # still served, by the others and the new one
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


async def test_unix_socket_of_a_live_server_is_refused_and_removed_on_stop(
    app_dir: Path, tmp_path: Path
) -> None:
    path = str(tmp_path / "live.sock")
    async with serving_unix(app_dir, path) as process:
        second = await asyncio.to_thread(run_cli, "cliapp:app", "--uds", path, cwd=app_dir)
        assert second.returncode == 1
        assert f"cannot listen on {path}: address already in use" in one_error_line(second)
        # The first server is still reachable.
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), TIMEOUT)).startswith(b"HTTP/1.1 200 OK")
        writer.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    assert not await asyncio.to_thread(os.path.exists, path)  # a clean stop removes the file


async def test_stale_unix_socket_is_replaced(app_dir: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # a file left behind by a server that is gone: nobody listens
    async with serving_unix(app_dir, path) as process:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    regular = tmp_path / "notes.txt"
    regular.write_text("mine")
    result = run_cli("cliapp:app", "--uds", str(regular), cwd=app_dir)
    assert result.returncode == 1 and "exists and is not a socket" in one_error_line(result)
    assert regular.read_text() == "mine"


@asynccontextmanager
async def serving_unix(app_dir: Path, path: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await processes.spawn(
        sys.executable, "-m", "tinystream", "cliapp:app", "--uds", path,
        cwd=app_dir, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        await read_until(process, f"listening on unix:{path}".encode())
        yield process
    finally:
        await processes.stop(process, signal.SIGKILL)  # its whole group


async def test_demo_with_workers_and_memory_broadcast_warns_once() -> None:
    """Each worker would get its own chat: say so at start-up, naming the fix."""

    async def start_up_lines(*args: str) -> list[bytes]:
        process = await processes.spawn(
            sys.executable, "-m", "tinystream", "examples.demo:app", "--port", "0", *args,
            cwd=ROOT, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DEMO_BROADCAST": "memory://"},
        )  # fmt: skip
        assert process.stderr is not None
        lines: list[bytes] = []
        try:
            while not lines or not URL.search(lines[-1]):
                lines.append(await asyncio.wait_for(process.stderr.readline(), TIMEOUT))
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
        finally:
            await processes.stop(process, signal.SIGKILL)  # its whole group
        return lines

    lines = await start_up_lines("--workers", "2")
    warnings = [line for line in lines if b"memory://" in line]
    assert len(warnings) == 1 and b"WARNING" in warnings[0], lines
    assert b"DEMO_BROADCAST=redis://" in warnings[0]
    assert not [line for line in await start_up_lines() if b"memory://" in line]


async def test_reload_restarts_on_a_change(app_dir: Path) -> None:
    module = app_dir / "cliapp.py"
    async with serving(app_dir, "cliapp:app", "--port", "0", "--reload") as (process, _, port):
        await read_until(process, b"application loaded")
        first = await get(port)
        module.write_text(APP.replace("str(os.getpid())", '"changed"'))
        await read_until(process, b"cliapp.py changed: restarting")
        await read_until(process, b"application loaded")
        assert await get(port) == b"changed" != first
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
