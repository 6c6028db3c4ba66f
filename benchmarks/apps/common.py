"""What every benchmark app serves, and the bookkeeping they share.

Endpoints (same behaviour in every framework):
  GET /                 "hello, world\\n"
  GET /big?mb=N         N MiB in 64 KiB chunks, streamed
  GET /sse?n=N          N events of 64 bytes of data
  GET /fanout           an event stream: "ready" once subscribed, then what /publish sends
  POST /publish?n=N     N events to every /fanout subscriber
  GET /idle             an event stream that sends "ready" and then nothing
  GET /endless          64 KiB chunks for ever, as fast as the client takes them
  GET /probe/await      one chunk, then waits for ever  (its finally is timed)
  GET /probe/busy       chunks for ever without awaiting (its finally is timed)
  GET /closed           {"closed": [time.time() of the last 50 probes' finally], "count": N, "live": N}
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

HELLO = b"hello, world\n"
CHUNK = b"b" * 65536
EVENT_DATA = "x" * 64

closed: list[float] = []  # when each probe producer's finally ran (wall clock)
live = 0  # probe and endless producers currently running


def producer_started() -> None:
    global live
    live += 1


def producer_finished(probe: bool) -> None:
    global live
    live -= 1
    if probe:
        closed.append(time.time())


def closed_report() -> dict[str, object]:
    # The last 50 times, and how many there were in all (the list is capped).
    return {"closed": closed[-50:], "count": len(closed), "live": live}


def counted(produce: AsyncIterator[bytes], probe: bool) -> AsyncIterator[bytes]:
    """``produce``, counted in ``live`` while it runs; a probe's finally is timed."""

    async def wrapper() -> AsyncIterator[bytes]:
        producer_started()
        try:
            async for item in produce:
                yield item
        finally:
            producer_finished(probe)

    return wrapper()
