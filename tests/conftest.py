"""Session-wide settings and checks: timing-independent Hypothesis, no program left running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from . import processes

# Hypothesis's per-example deadline (200 ms) and its too_slow health check measure
# wall-clock time, which a loaded machine stretches: they would fail correct code
# with "Unreliable test timings". A hang is caught by pytest-timeout instead.
settings.register_profile("tinystream", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tinystream")


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fail the run (after killing them) if tests left programs running."""
    yield
    left = processes.kill_leftovers()
    if left:
        pytest.fail("tests left programs running (now killed):\n" + "\n".join(left))
