"""Every code block of README.md runs as written, pasted into a file in an empty folder.

Each Python block is saved in a fresh directory and run in a subprocess with only
tinystream importable (PYTHONPATH is the checkout, as ``pip install`` would make it).
Servers listen on port 0 and are stopped by the test: the tour's ``run(...,
port=8000)`` is pointed at port 0, the command lines get ``--port 0``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tinystream.testing import ClientConnection

from . import processes

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
URL = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def readme_blocks(language: str) -> list[tuple[str, str]]:
    """``(section heading, code)`` for each fenced block in ``language``."""
    blocks, heading = [], ""
    text = (ROOT / "README.md").read_text()
    for match in re.finditer(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```$", text, re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        elif match.group(2) == language:
            blocks.append((heading, match.group(3)))
    return blocks


def block(section: str) -> str:
    found = [code for heading, code in readme_blocks("python") if heading.startswith(section)]
    assert len(found) == 1, f"one python block under {section!r}"
    return found[0]


def test_the_readme_starts_with_its_two_commands() -> None:
    commands = readme_blocks("sh")[0][1].splitlines()
    assert commands[0].endswith("python -m tinystream examples.demo:app")
    assert commands[1].endswith("python -m pytest")


# The sections whose blocks have a test of their own below; any other block must
# at least import cleanly (test_every_other_block_imports).
CHECKED = ("A tour", "Server-Sent Events", "Testing your own streams")


@asynccontextmanager
async def serve(cwd: Path, *command: str) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    process = await processes.spawn(
        *command, cwd=cwd, env=ENV, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        while True:
            line = await asyncio.wait_for(process.stderr.readline(), TIMEOUT)
            assert line, "the server exited before listening"
            match = URL.search(line)
            if match:
                break
        yield int(match.group(1)), process
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    finally:
        await processes.stop(process, signal.SIGKILL)  # its whole group


async def request(port: int, method: str, path: str, **kwargs: object) -> tuple[int, bytes]:
    conn = await ClientConnection.open("127.0.0.1", port)
    try:
        response = await conn.request(method, path, **kwargs)  # type: ignore[arg-type]
        return response.status, response.body
    finally:
        await conn.close()


async def check_tour(port: int) -> None:
    assert await request(port, "GET", "/hello/world") == (200, b"hello world\n")
    assert await request(port, "POST", "/upload", body=b"x" * 1000) == (200, b"1000 bytes\n")
    conn = await ClientConnection.open("127.0.0.1", port)
    response = await conn.start("GET", "/ticks")
    async for chunk in response.aiter_bytes():
        assert chunk == b"tick 0\n"
        break
    await conn.close()


@pytest.fixture
def tour_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(block("A tour"))
    return tmp_path


async def test_tour_as_a_script(tour_dir: Path) -> None:
    """``python app.py``, its run(..., port=8000) moved to port 0."""
    launcher = (
        "import runpy, tinystream\n"
        "real = tinystream.run\n"
        "tinystream.run = lambda handler, host, port, **kw: real(handler, host, 0, **kw)\n"
        "runpy.run_path('app.py', run_name='__main__')\n"
    )
    async with serve(tour_dir, sys.executable, "-c", launcher) as (port, _):
        await check_tour(port)


async def test_tour_from_the_command_line(tour_dir: Path) -> None:
    """``tinystream app:router --port 8061``: importing app.py must not start a server."""
    command = (sys.executable, "-m", "tinystream", "app:router", "--port", "0")
    async with serve(tour_dir, *command) as (port, process):
        await check_tour(port)
    assert process.stdout is not None
    assert b"cleaned up" in await process.stdout.read()  # the producer's finally ran


async def test_server_sent_events_block(tmp_path: Path) -> None:
    (tmp_path / "news.py").write_text(block("Server-Sent Events"))
    command = (sys.executable, "-m", "tinystream", "news:router", "--port", "0")
    auth = {"Authorization": "Bearer s3cret"}
    async with serve(tmp_path, *command) as (port, _):
        assert (await request(port, "GET", "/events"))[0] == 401
        bad = await request(port, "GET", "/events", headers={**auth, "Last-Event-ID": "abc"})
        assert bad == (400, b"Last-Event-ID must be a number\n")  # not a 500
        conn = await ClientConnection.open("127.0.0.1", port)
        response = await conn.start("GET", "/events", headers={**auth, "Last-Event-ID": "1"})
        assert response.status == 200
        events = response.aiter_events()
        replayed = [await asyncio.wait_for(anext(events), TIMEOUT) for _ in range(2)]
        assert [(e.id, e.data) for e in replayed] == [("2", "second"), ("3", "third")]
        await conn.close()


async def test_testing_block_passes_with_pytest(tour_dir: Path) -> None:
    (tour_dir / "test_app.py").write_text(block("Testing your own streams"))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tour_dir,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


OTHER_BLOCKS = [
    pytest.param(code, id=heading.split()[0].lower())
    for heading, code in readme_blocks("python")
    if not heading.startswith(CHECKED)
]


@pytest.mark.parametrize("code", OTHER_BLOCKS)
def test_every_other_block_imports(tmp_path: Path, code: str) -> None:
    (tmp_path / "snippet.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "-c", "import snippet"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr


def test_license_file_matches_pyproject() -> None:
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_sources_point_to_no_file_outside_the_repository() -> None:
    pattern = re.compile(r"\.\./shared/|\.\./NOTES")
    for folder in ("tinystream", "tests", "examples", "scripts", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert not pattern.search(text), path
