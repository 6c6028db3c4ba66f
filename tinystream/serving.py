"""Listening, embedding and stopping: :func:`start_server`, :func:`serve`, :func:`run`.

Graceful shutdown, in order: stop accepting; tell every request
(``request.is_shutting_down()``) and close idle keep-alive connections; let
in-flight responses finish, with ``Connection: close``; after ``graceful_timeout``
cut whatever is still open (streams' producers are closed, their ``finally``
blocks run); then return. A server with endless open streams therefore always stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl as ssl_module
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from . import _logging
from .asgi import ASGIHandler, is_asgi_app
from .config import Config
from .server import Handler, HTTPConnection, ServerContext

__all__ = ["CertificateError", "Server", "ServerStats", "run", "serve", "start_server"]

logger = logging.getLogger("tinystream")

#: After the grace period, time for cancelled handlers and producers to run their
#: ``finally`` blocks before close() returns anyway.
CLEANUP_TIMEOUT = 2.0  # seconds
#: Listen backlog: Linux caps it at net.core.somaxconn (4096 on recent kernels).
BACKLOG = 2048


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of a running server."""

    connections: int  # open client connections
    streams: int  # streaming responses in progress
    paused_writers: int  # connections whose transport paused us (slow clients)
    buffered_bytes: int  # bytes waiting in transports' write buffers
    requests_served: int  # exchanges ended since start
    outcomes: dict[str, int]  # how responses ended: complete, client_gone, error, stalled...


#: What asyncio reports when accept() fails for lack of descriptors or memory;
#: it then stops accepting on that socket for a second and tries again.
_ACCEPT_EXHAUSTED = "socket.accept() out of system resource"


#: asyncio retries a failed accept() every second; this long without a failure
#: report means accepting works again (or nobody tried): the episode is over.
ACCEPT_RECOVERY_QUIET = 2.5  # seconds


class _AcceptErrorFilter:
    """A loop exception handler that turns asyncio's accept-exhaustion reports into
    one warning per episode (asyncio reports every retry, once a second, with a
    traceback each time); everything else goes to the handler that was there."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[int]) -> None:
        self._loop = loop
        self._sockets = set(sockets)
        self.previous = loop.get_exception_handler()
        self._quiet: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        sock = context.get("socket")
        if (
            context.get("message") == _ACCEPT_EXHAUSTED
            and sock is not None
            and sock.fileno() in self._sockets
        ):
            if self._quiet is None:
                logger.warning(
                    "cannot accept new connections (%s); open connections are still served, "
                    "and accepting resumes when descriptors free up",
                    context.get("exception"),
                )
            else:
                self._quiet.cancel()
            self._quiet = loop.call_later(ACCEPT_RECOVERY_QUIET, self._recovered)
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _recovered(self) -> None:
        self._quiet = None
        logger.warning("accepting new connections again")

    def remove(self) -> None:
        if self._quiet is not None:
            self._quiet.cancel()
        if self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self.previous)


class Server:
    """A running tinystream server. Made by :func:`start_server`."""

    def __init__(
        self,
        ctx: ServerContext,
        server: asyncio.Server,
        url: str,
        port: int | None,
        asgi: ASGIHandler | None = None,
        unix_path: str | None = None,
    ) -> None:
        self._ctx = ctx
        self._server = server
        self.url = url
        self.port = port
        self._asgi = asgi  # its lifespan shutdown runs after the last connection ended
        # The Unix socket file we created, and its identity, so that close()
        # removes it - but never a file another server has put there since.
        self._unix_path = unix_path
        self._unix_identity = _identity(unix_path) if unix_path is not None else None
        self._closing: asyncio.Task[None] | None = None
        self._accept_filter = _AcceptErrorFilter(ctx.loop, [s.fileno() for s in server.sockets])
        ctx.loop.set_exception_handler(self._accept_filter)

    def __repr__(self) -> str:
        return f"<Server {self.url} connections={len(self._ctx.connections)}>"

    @property
    def config(self) -> Config:
        """The server's :class:`Config` (every limit and timeout in force)."""
        return self._ctx.config

    def stats(self) -> ServerStats:
        """Open connections, open streams, writers paused by backpressure, buffered bytes."""
        connections = list(self._ctx.connections)
        paused = buffered = 0
        for conn in connections:
            write_paused, backlog = conn.write_backlog()
            paused += write_paused
            buffered += backlog
        return ServerStats(
            connections=len(connections),
            streams=self._ctx.open_streams,
            paused_writers=paused,
            buffered_bytes=buffered,
            requests_served=self._ctx.requests_served,
            outcomes=dict(self._ctx.outcomes),
        )

    async def wait_stats(
        self, predicate: Callable[[ServerStats], bool], timeout: float | None = None
    ) -> ServerStats:
        """Wait until ``predicate(self.stats())`` is true; return those stats.

        Re-checked whenever a connection opens or closes, a stream starts or ends,
        a request ends, or a writer is paused or resumed - never by polling.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            waiter: asyncio.Future[None] = loop.create_future()
            self._ctx.stats_waiters.append(waiter)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"server stats never matched; last: {stats}")
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                raise TimeoutError(f"server stats never matched; last: {self.stats()}") from None

    def is_shutting_down(self) -> bool:
        """True once :meth:`close` has begun."""
        return self._ctx.shutting_down.is_set()

    async def close(self) -> None:
        """Stop gracefully (see the module docstring). Safe to call more than once."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        ctx = self._ctx
        self._accept_filter.remove()
        self._server.close()
        ctx.shutting_down.set()
        for conn in list(ctx.connections):
            conn.begin_shutdown()
        if not await _wait_until(lambda: not ctx.connections, ctx, ctx.config.graceful_timeout):
            logger.info("grace period over: closing %d connection(s)", len(ctx.connections))
            for conn in list(ctx.connections):
                conn.force_close()
        if ctx.tasks:
            await asyncio.wait(list(ctx.tasks), timeout=CLEANUP_TIMEOUT)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), CLEANUP_TIMEOUT)
        if self._unix_path is not None:
            remove_unix_socket(self._unix_path, self._unix_identity)
        if self._asgi is not None:
            await self._asgi.shutdown(ctx.config.graceful_timeout)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _wait_until(done: Callable[[], bool], ctx: ServerContext, timeout: float) -> bool:
    # Connections leave ctx.connections in connection_lost; each exit re-checks.
    if done():
        return True
    waiter: asyncio.Future[None] = ctx.loop.create_future()

    def check() -> None:
        if done() and not waiter.done():
            waiter.set_result(None)

    ctx.on_connection_closed = check
    try:
        await asyncio.wait_for(waiter, timeout)
    except asyncio.TimeoutError:
        return False
    finally:
        ctx.on_connection_closed = None
    return True


def _make_config(config: Config | None, options: dict[str, Any]) -> Config:
    if config is not None:
        if options:
            raise TypeError("pass either config= or keyword options, not both")
        return config
    unknown = set(options) - Config.option_names()
    if unknown:
        raise TypeError(
            f"unknown server option(s) {sorted(unknown)}; known: {sorted(Config.option_names())}"
        )
    return Config(**options)


def ssl_context(
    ssl: ssl_module.SSLContext | None, certfile: str | None, keyfile: str | None
) -> ssl_module.SSLContext | None:
    """The TLS context to serve with: ``ssl`` as given, or one made from the files.

    Raises:
        CertificateError: a file is missing, unreadable or not a usable PEM pair.
        ValueError: ``keyfile`` without ``certfile``.
    """
    if ssl is not None:
        return ssl
    if certfile is None:
        if keyfile is not None:
            raise ValueError("keyfile given without certfile")
        return None
    # OpenSSL's errors name neither the file nor the problem in words ("[Errno 2]
    # No such file or directory", "[SSL] PEM lib"): check readability first.
    for kind, path in (("certificate", certfile), ("key", keyfile)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise CertificateError(
                    f"cannot read {kind} file {path!r}: {exc.strerror}"
                ) from None
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl_module.SSLError as exc:
        files = repr(certfile) if keyfile is None else f"{certfile!r} with key {keyfile!r}"
        reason = (exc.reason or "").replace("_", " ").lower()
        if reason in ("", "pem lib"):  # OpenSSL's word for "could not parse it"
            reason = "not a PEM certificate chain with its private key"
        raise CertificateError(f"cannot use certificate {files}: {reason}") from None
    return context


class CertificateError(ValueError):
    """A certificate or key file is missing, unreadable or not a usable PEM pair."""


async def start_server(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    uds: str | None = None,
    sock: socket.socket | None = None,
    ssl: ssl_module.SSLContext | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    reuse_port: bool = False,
    interface: str = "auto",
    lifespan: str = "auto",
    root_path: str = "",
    config: Config | None = None,
    **options: Any,
) -> Server:
    """Start serving ``handler`` and return at once, bound and listening.

    Args:
        handler: ``async def handler(request) -> Response`` (a plain ``def`` runs
            in a worker thread), or a :class:`~tinystream.Router`, or an ASGI 3
            application (``app(scope, receive, send)``: FastAPI, Starlette ...).
        host, port: where to listen; ``port=0`` picks a free port (see ``.port``).
        uds: listen on this Unix socket path instead. A socket file left by a server
            that is gone is replaced; one a live server listens on is refused
            (``OSError`` EADDRINUSE). The file is removed when the server closes.
        sock: listen on this already-bound socket instead.
        ssl / certfile, keyfile: serve HTTPS.
        reuse_port: set ``SO_REUSEPORT`` (several processes on one port).
        interface: ``"auto"`` (an ASGI app is recognised by its signature),
            ``"native"`` or ``"asgi"``.
        lifespan: for an ASGI app, ``"auto"``, ``"on"`` or ``"off"``: its lifespan
            startup runs before the first connection is accepted, its shutdown
            after the last one ended (in :meth:`Server.close`).
        root_path: for an ASGI app, the scope's ``root_path``.
        config / options: a :class:`Config`, or its fields as keyword arguments.

    Raises:
        TypeError: an unknown option, or a handler that is not callable.
        ValueError: a bad option value (:class:`CertificateError` for TLS files).
        OSError: the address cannot be bound (``socket.gaierror``: unknown host).
        LifespanFailed: the ASGI app's lifespan startup failed (its message).
    """
    if not callable(handler):
        raise TypeError(f"handler must be callable, got {handler!r}")
    if interface not in ("auto", "native", "asgi"):
        raise ValueError(f"interface must be 'auto', 'native' or 'asgi', got {interface!r}")
    asgi: ASGIHandler | None = None
    if interface == "asgi" or (interface == "auto" and is_asgi_app(handler)):
        handler = asgi = ASGIHandler(cast(Any, handler), root_path=root_path, lifespan=lifespan)
    cfg = _make_config(config, options)
    ctx = ServerContext(handler, cfg)
    context = ssl_context(ssl, certfile, keyfile)
    scheme = "https" if context else "http"

    def factory() -> HTTPConnection:
        return HTTPConnection(ctx)

    loop = asyncio.get_running_loop()
    server: asyncio.Server
    if uds is not None:
        remove_stale_unix_socket(uds)
        server = await loop.create_unix_server(
            factory,
            uds,
            ssl=context,
            backlog=BACKLOG,
            ssl_handshake_timeout=cfg.header_timeout if context is not None else None,
            start_serving=False,
        )
        await _start_serving(server, asgi, scheme, (uds, None))
        return Server(ctx, server, f"unix:{uds}", None, asgi, unix_path=uds)
    # asyncio calls connection_made only after a TLS handshake, so our header
    # deadline would not cover a client that never finishes one: bound it here.
    handshake = cfg.header_timeout if context is not None else None
    if sock is not None:
        server = await loop.create_server(
            factory,
            sock=sock,
            ssl=context,
            backlog=BACKLOG,
            ssl_handshake_timeout=handshake,
            start_serving=False,
        )
    else:
        server = await loop.create_server(
            factory,
            host,
            port,
            ssl=context,
            backlog=BACKLOG,
            reuse_port=reuse_port or None,
            ssl_handshake_timeout=handshake,
            start_serving=False,
        )
    bound = server.sockets[0].getsockname()
    if isinstance(bound, str):  # sock= was a Unix socket (the CLI binds it once, then forks)
        await _start_serving(server, asgi, scheme, (bound, None))
        return Server(ctx, server, f"unix:{bound}", None, asgi)
    await _start_serving(server, asgi, scheme, (str(bound[0]), int(bound[1])))
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return Server(ctx, server, f"{scheme}://{shown}:{bound[1]}", int(bound[1]), asgi)


async def _start_serving(
    server: asyncio.Server,
    asgi: ASGIHandler | None,
    scheme: str,
    address: tuple[str, int | None],
) -> None:
    # Bound but not accepting yet: an ASGI app's lifespan startup runs first, so
    # no request reaches it before it is ready (clients that connect meanwhile
    # wait in the listen backlog instead of being refused).
    if asgi is not None:
        asgi.bind(scheme, address)
        try:
            await asgi.startup()
        except BaseException:
            server.close()
            raise
    await server.start_serving()


def remove_stale_unix_socket(path: str) -> None:
    """Make way for a Unix socket at ``path``: remove a socket file nobody listens on.

    Raises:
        OSError: EADDRINUSE if a server is listening on ``path`` (taking its place
            would leave it unreachable); ``ValueError`` if ``path`` is not a socket
            (the user's file, never ours to delete).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{path!r} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a file left behind by a server that is gone
    else:
        raise OSError(errno.EADDRINUSE, f"a server is listening on {path!r}")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def bind_socket(host: str, port: int, uds: str | None = None) -> socket.socket:
    """A listening socket, bound once, for processes that share it (``--workers``,
    ``--reload``): the kernel refuses an address another process listens on,
    which ``SO_REUSEPORT`` on separate sockets would silently share with it.

    Raises:
        OSError: cannot bind (``socket.gaierror`` for an unknown host); the
            errors of :func:`remove_stale_unix_socket` for ``uds``.
    """
    if uds is not None:
        remove_stale_unix_socket(uds)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = uds
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        # Lets a restarted server bind while its old connections sit in TIME_WAIT;
        # unlike SO_REUSEPORT it never lets two listeners share the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def remove_unix_socket(path: str, identity: tuple[int, int] | None) -> None:
    """Remove the socket file we created at ``path`` (CPython 3.13 does it for
    asyncio's servers, 3.10-3.12 leave it behind), if it is still ours."""
    if identity is not None and _identity(path) == identity:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def serve(handler: Handler, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Serve until cancelled, then shut down gracefully.

    Args:
        handler, host, port, kwargs: as for :func:`start_server`.

    Returns:
        Never; cancelling the task that awaits it stops the server (gracefully,
        as :meth:`Server.close`) and re-raises ``CancelledError``.

    Raises:
        TypeError / ValueError / OSError: as :func:`start_server`.
    """
    server = await start_server(handler, host, port, **kwargs)
    logger.info("tinystream listening on %s", server.url)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


def run(handler: Handler, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Serve in this thread until SIGINT or SIGTERM, then stop gracefully.

    A second signal exits at once. Configures logging (INFO to stderr, one
    timestamped line per record) if the application has not. Must not be called
    with an event loop running (use :func:`serve` there).

    Args:
        handler, host, port, kwargs: as for :func:`start_server`.

    Returns:
        None, once the server has stopped.

    Raises:
        TypeError / ValueError / OSError: as :func:`start_server`.
    """
    if not logging.getLogger().handlers:
        _logging.configure("INFO", "text")
    asyncio.run(run_until_signal(handler, host, port, kwargs))


async def run_until_signal(
    handler: Handler,
    host: str,
    port: int,
    kwargs: dict[str, Any],
    *,
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
    on_ready: Callable[[Server], None] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    server = await start_server(handler, host, port, **kwargs)
    stop = asyncio.Event()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            logger.info("shutting down (signal again to exit at once)")
            stop.set()
            return
        # Second signal: the user wants out now, whatever is still running.
        logger.warning("exiting at once")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    installed = []
    for signum in signals:
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    # Announced only now: a signal sent as soon as the line is read must find
    # our handler, not the default action (which ends the process at once).
    if on_ready is None:
        logger.info("tinystream listening on %s", server.url)
    else:
        on_ready(server)
    try:
        await stop.wait()
        await server.close()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    logger.info("stopped")
