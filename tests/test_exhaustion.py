"""Running out of file descriptors: log once, keep serving, recover.

The server runs in a subprocess with a lowered RLIMIT_NOFILE, so exhausting its
descriptors cannot disturb the test process.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from . import processes

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 80
TIMEOUT = 30.0  # seconds; each wait is a guard against hangs, a loaded machine included
SERVER = """
import resource, tinystream
from tinystream import Response
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))
async def app(request):
    return Response("ok")
tinystream.run(app, port=0, keep_alive_timeout=60)
"""


async def request_once(port: int) -> tuple[asyncio.StreamWriter, asyncio.Task[bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return writer, asyncio.ensure_future(reader.readuntil(b"ok"))


async def test_descriptor_exhaustion_logs_once_and_recovers(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    process = await processes.spawn(
        sys.executable,
        str(script),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stderr is not None
    log: list[bytes] = []

    async def read_until(pattern: bytes) -> bytes:
        while True:
            line = await asyncio.wait_for(process.stderr.readline(), TIMEOUT)  # type: ignore[union-attr]
            assert line, b"".join(log)
            log.append(line)
            if pattern in line:
                return line

    try:
        port = int(
            re.search(rb"listening on \S+:(\d+)", await read_until(b"listening on")).group(1)
        )  # type: ignore[union-attr]
        clients = [await request_once(port) for _ in range(CONNECTIONS)]
        await read_until(b"cannot accept new connections")
        # Connections accepted before the limit are served meanwhile; each client
        # closes once served, freeing a descriptor, and the waiting ones get in.
        writers = {task: writer for writer, task in clients}
        pending = set(writers)
        waited_at_first = None
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, f"{len(pending)} connections never served"
            if waited_at_first is None:
                waited_at_first = len(pending)
            for task in done:
                assert task.result().endswith(b"ok")
                writers[task].close()
        assert waited_at_first  # some connections really had to wait for a descriptor
        await read_until(b"accepting new connections again")
    finally:
        process.terminate()
        try:
            rest = await asyncio.wait_for(process.stderr.read(), TIMEOUT)
        finally:
            await processes.stop(process)
    output = b"".join(log) + rest
    assert output.count(b"cannot accept new connections") == 1  # no log storm
    assert b"Traceback" not in output
