"""FlowControl: writers wait while paused and wake on resume or loss; reading pauses by reason."""

from __future__ import annotations

import asyncio

from tinystream._flow import FlowControl, ReadPause

from .helpers import make_connection


async def test_a_writer_waits_while_paused_and_wakes_on_resume() -> None:
    flow = FlowControl(make_connection(lambda r: None)[1])
    await asyncio.wait_for(flow.wait_writable(), 1)  # not paused: returns at once
    flow.pause_writing()
    waiter = asyncio.ensure_future(flow.wait_writable())
    await asyncio.sleep(0)
    assert not waiter.done()
    flow.resume_writing()
    await asyncio.wait_for(waiter, 1)


async def test_a_cancelled_wait_does_not_poison_the_next_one() -> None:
    flow = FlowControl(make_connection(lambda r: None)[1])
    flow.pause_writing()
    first = asyncio.ensure_future(flow.wait_writable())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    second = asyncio.ensure_future(flow.wait_writable())
    await asyncio.sleep(0)
    assert not second.done()  # waits, rather than failing with the old cancellation
    flow.resume_writing()
    await asyncio.wait_for(second, 1)


async def test_losing_the_connection_releases_writers_for_good() -> None:
    flow = FlowControl(make_connection(lambda r: None)[1])
    flow.pause_writing()
    waiter = asyncio.ensure_future(flow.wait_writable())
    await asyncio.sleep(0)
    flow.release()
    await asyncio.wait_for(waiter, 1)
    await asyncio.wait_for(flow.wait_writable(), 1)  # still paused, but gone: no wait


async def test_reading_is_paused_while_any_reason_holds() -> None:
    _, transport = make_connection(lambda r: None)
    flow = FlowControl(transport)
    flow.pause_reading(ReadPause.BODY)
    flow.pause_reading(ReadPause.PIPELINE)
    assert not transport.reading
    flow.resume_reading(ReadPause.BODY)
    assert not transport.reading  # the pipeline still holds it
    flow.resume_reading(ReadPause.PIPELINE)
    assert transport.reading
    flow.resume_reading(ReadPause.PIPELINE)  # resuming twice is harmless
    assert transport.reading


async def test_a_lingering_close_resumes_reading_whatever_paused_it() -> None:
    """``resume_all_reading`` clears every reason at once; ``repr`` shows what holds."""
    _, transport = make_connection(lambda r: None)
    flow = FlowControl(transport)
    assert repr(flow) == "<FlowControl open>"
    flow.pause_reading(ReadPause.BODY)
    flow.pause_reading(ReadPause.PIPELINE)
    flow.pause_writing()
    assert "write paused" in repr(flow) and "read paused" in repr(flow)
    flow.resume_all_reading()
    assert transport.reading
    flow.resume_all_reading()  # nothing paused: harmless
    assert transport.reading
