"""Serve an ASGI 3 application (FastAPI, Starlette ...) as a tinystream handler.

:class:`ASGIHandler` is a native handler: the connection core runs it like any
other, so an ASGI app gets the core's guarantees - a client that leaves stops the
work at once, a slow client pauses it, shutdown always ends.

Theory of operation
-------------------
Each request is a :class:`Cycle`, run in the task the server made for the
request, as uvicorn runs an app: one task per request. The app's ``send()``
writes through the request's exchange while the app runs - a whole body as one
fixed response, a streamed one chunk by chunk, paused while the client reads
slowly. How, and what happens when the response is cut short, is described in
:mod:`tinystream._asgi_cycle`.

On graceful shutdown every request whose body was read gets ``http.disconnect``
from ``receive()``, and an event stream (``text/event-stream``) ends at once with
a clean last chunk, as native event streams do: browsers reconnect.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._asgi_cycle import Cycle, Scope
from ._asgi_errors import ASGIProtocolError
from ._exchange import PUSHED, RUNNING
from ._lifespan import LIFESPAN_MODES, Lifespan, LifespanFailed
from .request import Request
from .responses import Response, StreamingResponse

__all__ = ["ASGIHandler", "ASGIProtocolError", "LifespanFailed", "is_asgi_app"]

logger = logging.getLogger("tinystream.error")

ASGIApp = Callable[..., Awaitable[None]]

#: What we tell the app: ASGI 3, HTTP spec 2.4 (a send() on a closed connection
#: raises OSError; https://asgi.readthedocs.io/en/latest/specs/www.html).
SPEC_VERSION = "2.4"
#: After the server stopped, how long unfinished app tasks get to run their
#: ``finally`` blocks (they were cancelled already) before lifespan shutdown.
APP_CANCEL_WAIT = 2.0  # seconds


def is_asgi_app(app: object) -> bool:
    """True when ``app`` looks like an ASGI 3 application: ``app(scope, receive, send)``.

    A native handler takes one argument (the request). A callable whose signature
    accepts both, or cannot be inspected, is not taken for ASGI: pass
    ``interface="asgi"`` to say so.
    """
    if not callable(app):
        return False
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind(None, None, None)
    except TypeError:
        return False
    try:
        signature.bind(None)
    except TypeError:
        return True
    return False


class ASGIHandler:
    """A native handler that runs an ASGI 3 application.

    ``start_server`` (and ``run``, ``serve``, ``serve_for_test``, the CLI) wrap an
    ASGI app in one of these by themselves and run its lifespan; build one by hand
    only to serve an ASGI app where a handler is expected (a ``Router`` route).

    Args:
        app: the ASGI 3 application.
        root_path: the ASGI ``root_path`` (the prefix a proxy stripped); it is also
            prefixed to ``path`` and ``raw_path``, as uvicorn does and Starlette expects.
        lifespan: ``"auto"``, ``"on"`` or ``"off"`` (see :mod:`tinystream._lifespan`).
    """

    #: The app's own ``Server`` and ``Date`` fields, if it sends them, replace the
    #: server's (see ``ServerContext``); the server adds those it leaves out.
    own_server_fields = True

    def __init__(self, app: ASGIApp, *, root_path: str = "", lifespan: str = "auto") -> None:
        if not callable(app):
            raise TypeError(f"an ASGI application must be callable, got {app!r}")
        if lifespan not in LIFESPAN_MODES:
            raise ValueError(f"lifespan must be one of {LIFESPAN_MODES}, got {lifespan!r}")
        if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
            raise ValueError(f"root_path must start with '/', not end with one: {root_path!r}")
        self.app = app
        self.root_path = root_path
        self._raw_root = root_path.encode("ascii")
        self.scheme = "http"
        self.server: tuple[str, int | None] | None = None
        #: The lifespan state; each request's scope gets a shallow copy.
        self.state: dict[str, Any] = {}
        self._lifespan = Lifespan(app, lifespan, self.state)
        #: App tasks that outlive their response (background work after the last send()).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cycles: set[Cycle] = set()
        self._shutting_down = False
        self._shutdown_watch: asyncio.Task[None] | None = None
        self._warned_websocket = False

    def bind(self, scheme: str, server: tuple[str, int | None] | None) -> None:
        """Where the server listens: the scope's ``scheme`` and ``server``."""
        self.scheme = scheme
        self.server = server

    async def startup(self) -> None:
        """Run the app's lifespan startup (before the first connection is accepted).

        Raises:
            LifespanFailed: the app's startup failed; the message is the app's.
        """
        await self._lifespan.startup()

    async def shutdown(self, timeout: float) -> None:
        """After the last connection ended: wait for app tasks, then lifespan shutdown."""
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()  # the server already ended their responses
        if tasks:
            await asyncio.wait(tasks, timeout=APP_CANCEL_WAIT)
        if self._shutdown_watch is not None:
            self._shutdown_watch.cancel()
        await self._lifespan.shutdown(timeout)

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        if self._shutdown_watch is None:
            # One watcher for the whole server: the shutdown event is shared.
            self._shutdown_watch = asyncio.get_running_loop().create_task(
                self._watch_shutdown(request)
            )
        fields = request.raw_headers
        for name, value in fields:
            if name == b"upgrade" and b"websocket" in value.lower():
                return self._refuse_websocket(request)
        exchange = RUNNING.get()
        # Nothing the app starts (a task, a task group) inherits the exchange: a
        # long-lived task would keep the request and its connection alive.
        RUNNING.set(None)
        if exchange is None or exchange.request is not request:
            raise RuntimeError("an ASGIHandler runs in the task the server made for its request")
        cycle = Cycle(
            self.app,
            self._scope(request, fields),
            request,
            exchange,
            shutting_down=self._shutting_down,
            tasks=self._tasks,
            cycles=self._cycles,
        )
        self._cycles.add(cycle)
        try:
            response = await cycle.run()
            return PUSHED if response is None else response
        finally:
            self._cycles.discard(cycle)
            if cycle.task is not None:
                self._tasks.discard(cycle.task)

    async def _watch_shutdown(self, request: Request) -> None:
        await request.wait_shutting_down()
        self._shutting_down = True
        for cycle in list(self._cycles):
            cycle.begin_shutdown()

    def _refuse_websocket(self, request: Request) -> Response:
        if not self._warned_websocket:
            self._warned_websocket = True
            logger.warning(
                "WebSocket upgrade requested (%s %s): tinystream does not serve "
                "WebSockets; answering 501 (logged once)",
                request.method,
                request.target,
            )
        return Response("WebSocket is not supported by this server\n", status=501)

    def _scope(self, request: Request, fields: list[tuple[bytes, bytes]]) -> Scope:
        target = request.target
        if target.startswith("/"):
            raw_path = target.partition("?")[0].encode("ascii")
        elif target == "*":
            raw_path = b"*"
        else:  # absolute form (RFC 9112 §3.2.2): the path after the authority
            rest = target.partition("://")[2]
            slash = rest.find("/")
            raw_path = rest[slash:].partition("?")[0].encode("ascii") if slash >= 0 else b"/"
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": SPEC_VERSION},
            "http_version": request.http_version,
            "method": request.method,
            "scheme": self.scheme,
            "path": self.root_path + request.path,
            "raw_path": self._raw_root + raw_path,
            "query_string": request.query.encode("ascii"),
            "root_path": self.root_path,
            "headers": fields,
            "client": request.client,
            "server": self.server,
            "state": self.state.copy() if self.state else {},
            "extensions": {},
        }
