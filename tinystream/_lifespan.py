"""The ASGI lifespan protocol: an application's startup before serving, its shutdown after.

The app is called once with a ``lifespan`` scope and lives in one task for the
whole life of the server: it receives ``lifespan.startup``, answers
``lifespan.startup.complete`` (or ``.failed``), then waits in ``receive()`` until
the server has ended every connection and sends ``lifespan.shutdown``.

Modes, as uvicorn's ``--lifespan``: ``on`` (a failure or a missing answer is fatal),
``auto`` (an app that raises before answering does not support lifespan: serve it
anyway), ``off`` (never call the app with a lifespan scope). ``lifespan.startup.failed``
is fatal in both ``on`` and ``auto``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["LIFESPAN_MODES", "Lifespan", "LifespanFailed"]

logger = logging.getLogger("tinystream.error")

LIFESPAN_MODES = ("auto", "on", "off")
#: After a lifespan shutdown timed out and its task was cancelled, how long its
#: ``finally`` blocks get before we stop waiting.
CANCEL_WAIT = 1.0  # seconds

ASGIApp = Callable[..., Awaitable[None]]


class LifespanFailed(RuntimeError):
    """The application's lifespan startup failed; the message is the app's."""


class Lifespan:
    """One application's lifespan task: :meth:`startup`, then :meth:`shutdown`."""

    def __init__(self, app: ASGIApp, mode: str, state: dict[str, Any]) -> None:
        if mode not in LIFESPAN_MODES:
            raise ValueError(f"lifespan must be one of {LIFESPAN_MODES}, got {mode!r}")
        self._app = app
        self._mode = mode
        self._state = state
        self._events: asyncio.Queue[dict[str, Any]] | None = None
        self._started: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run the app's startup; return when it completed (or is unsupported, in auto mode).

        Raises:
            LifespanFailed: the app sent ``lifespan.startup.failed``, or (mode ``on``)
                raised or returned before completing its startup.
        """
        if self._mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        self._events.put_nowait({"type": "lifespan.startup"})
        self._started = loop.create_future()
        self._stopped = loop.create_future()
        self._task = loop.create_task(self._main())
        try:
            await self._started
        except BaseException:
            await self._cancel()
            raise

    async def shutdown(self, timeout: float) -> None:
        """Send ``lifespan.shutdown`` and wait up to ``timeout`` for the app's answer."""
        task = self._task
        if task is None or task.done() or self._events is None or self._stopped is None:
            return
        self._events.put_nowait({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout)
        except asyncio.TimeoutError:
            logger.warning("application shutdown not complete in %.1f s; cancelled", timeout)
        finally:
            await self._cancel()

    async def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,), timeout=CANCEL_WAIT)

    async def _main(self) -> None:
        started, stopped = self._started, self._stopped
        assert started is not None and stopped is not None
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self._state,
        }
        try:
            await self._app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not started.done():
                if self._mode == "on":
                    started.set_exception(LifespanFailed(f"{type(exc).__name__}: {exc}"))
                    logger.error("application lifespan failed", exc_info=exc)
                else:
                    # uvicorn's rule: an app that raises before answering does not
                    # speak lifespan (a bare `assert scope["type"] == "http"`).
                    logger.info("ASGI 'lifespan' protocol appears unsupported (%r)", exc)
                    started.set_result(None)
            elif started.exception() is None and not stopped.done():
                # Started, then failed: the shutdown message would never be answered.
                logger.error("application lifespan task failed", exc_info=exc)
            # else: a startup that failed already reported the app's own message.
        finally:
            if not started.done():
                if self._mode == "on":
                    started.set_exception(
                        LifespanFailed("the application returned before completing its startup")
                    )
                else:
                    started.set_result(None)
            if not stopped.done():
                stopped.set_result(None)

    async def _receive(self) -> dict[str, Any]:
        assert self._events is not None
        return await self._events.get()

    async def _send(self, message: Mapping[str, Any]) -> None:
        started, stopped = self._started, self._stopped
        assert started is not None and stopped is not None
        kind = message.get("type")
        if kind == "lifespan.startup.complete" and not started.done():
            started.set_result(None)
        elif kind == "lifespan.startup.failed" and not started.done():
            started.set_exception(LifespanFailed(str(message.get("message", "")).strip()))
        elif kind == "lifespan.shutdown.complete" and not stopped.done():
            stopped.set_result(None)
        elif kind == "lifespan.shutdown.failed" and not stopped.done():
            logger.error("application shutdown failed: %s", message.get("message", ""))
            stopped.set_result(None)
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r} at this point")
