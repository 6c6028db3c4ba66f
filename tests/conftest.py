"""Session-wide checks: no program a test started outlives the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import processes


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fail the run (after killing them) if tests left programs running."""
    yield
    left = processes.kill_leftovers()
    if left:
        pytest.fail("tests left programs running (now killed):\n" + "\n".join(left))
