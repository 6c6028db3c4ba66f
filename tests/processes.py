"""Programs the tests start: each in its own process group, always stopped, pass or fail.

Every program a test runs for longer than one call (redis-server, nginx, chromium,
curl, ``python -m tinystream`` and its workers, helper scripts) is started here:

- In a new session, so it leads its own process group. Stopping signals the whole
  group, which reaches what the program forked itself (CLI and nginx workers,
  chromium's zygote and renderers); killing only the leader would orphan those.
- Under ``setpriv --pdeathsig KILL`` where util-linux has it: if the test process
  dies without cleaning up (killed by CI, an interpreter crash), the kernel kills
  the program too, instead of leaving, say, a redis-server behind.
- :func:`stop` signals the group politely, waits ``grace`` seconds, then SIGKILLs
  the group and reaps the leader: it never returns with the program still running,
  and never waits forever.

``tests/conftest.py`` calls :func:`kill_leftovers` when the session ends and fails
the run if a group started here was still alive (a test that forgot to stop it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

__all__ = ["GRACE", "kill_leftovers", "popen", "running", "spawn", "stop", "stop_popen"]

#: Time a program gets to exit after its polite signal before the group is killed.
#: Generous: on a loaded machine a graceful shutdown takes several times longer.
GRACE = 30.0  # seconds

_SETPRIV = shutil.which("setpriv")
#: Process groups started and not yet stopped, with the command and the test.
_started: dict[int, str] = {}


def _command(argv: tuple[str | Path, ...]) -> list[str]:
    command = [str(arg) for arg in argv]
    if _SETPRIV is not None:
        # pdeathsig survives the exec; setpriv itself is replaced by the program.
        command = [_SETPRIV, "--pdeathsig", "KILL", "--", *command]
    return command


def _register(pid: int, argv: tuple[str | Path, ...]) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?")
    _started[pid] = f"{' '.join(map(str, argv))} (started by {test})"


def _signal_group(pgid: int, sig: int) -> None:
    # Gone already (the whole group exited): nothing to signal.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def spawn(*argv: str | Path, **kwargs: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` in a new process group; stop it with :func:`stop`."""
    process = await asyncio.create_subprocess_exec(
        *_command(argv), start_new_session=True, **kwargs
    )
    _register(process.pid, argv)
    return process


async def stop(
    process: asyncio.subprocess.Process, sig: int = signal.SIGTERM, grace: float = GRACE
) -> int:
    """Send ``sig`` to the group, wait up to ``grace`` s, then SIGKILL it. Returns the exit code.

    Safe to call on a program that already exited (its group is still swept).
    """
    if process.returncode is None:
        _signal_group(process.pid, sig)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
    # Whatever the leader forked and left behind goes too.
    _signal_group(process.pid, signal.SIGKILL)
    code = await process.wait()
    _started.pop(process.pid, None)
    return code


@contextlib.asynccontextmanager
async def running(
    *argv: str | Path, stop_signal: int = signal.SIGTERM, grace: float = GRACE, **kwargs: Any
) -> AsyncIterator[asyncio.subprocess.Process]:
    """:func:`spawn` for the ``async with`` block, :func:`stop` at its end, pass or fail."""
    process = await spawn(*argv, **kwargs)
    try:
        yield process
    finally:
        await stop(process, stop_signal, grace)


def popen(*argv: str | Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` in a new process group (for sync fixtures); stop with :func:`stop_popen`."""
    process = subprocess.Popen(_command(argv), start_new_session=True, **kwargs)
    _register(process.pid, argv)
    return process


def stop_popen(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = GRACE
) -> int:
    """:func:`stop` for a :func:`popen` process."""
    if process.poll() is None:
        _signal_group(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    _signal_group(process.pid, signal.SIGKILL)
    code = process.wait()
    _started.pop(process.pid, None)
    return code


def kill_leftovers() -> list[str]:
    """SIGKILL every group started here and never stopped; describe those still alive."""
    alive = []
    for pgid, description in list(_started.items()):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # exited by itself; only never reaped through stop()
        else:
            alive.append(description)
        del _started[pgid]
    return alive
