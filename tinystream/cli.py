"""``tinystream MODULE:ATTR`` (or ``python -m tinystream``): serve a handler from the command line.

Errors a user can act on - a bad option, an address in use or unknown, a missing
certificate, a module that fails to import - are one line on stderr starting
with ``tinystream: error:`` and exit status 1 (2 for usage errors). A module that
raises at import shows its own traceback first, without tinystream's or
importlib's frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__, _logging
from ._lifespan import LifespanFailed
from .config import Config
from .serving import CertificateError, Server, bind_socket, run_until_signal, ssl_context

__all__ = ["WORKERS_ENV", "load_handler", "main"]

logger = logging.getLogger("tinystream")

#: Set to the worker count in a process started with ``--workers N``, before the
#: application is imported, so that it can warn about per-process state
#: (``Broadcast("memory://")`` does).
WORKERS_ENV = "TINYSTREAM_WORKERS"
#: Between restarts of a worker that keeps dying, so a crash at start cannot
#: turn into a fork loop.
RESTART_DELAY = 1.0  # seconds


class HandlerError(Exception):
    """``MODULE:ATTR`` does not name a usable handler; the message says why."""


def load_handler(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted) and return the callable it names.

    The current directory is importable, as with ``python -m``.

    Raises:
        HandlerError: malformed spec, module not found, attribute missing, not callable.
        Exception: whatever the module raises at import (one of *its* imports
            missing included), unchanged.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"handler must be given as MODULE:ATTR, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise HandlerError(f"module {module_name!r} not found") from None
        raise  # the module exists but one of *its* imports failed: show the traceback
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise HandlerError(f"{spec} is not callable (it is a {type(target).__name__})")
    return target


def _user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback without the frames of tinystream and importlib: the
    user's own code is what failed, and what they need to see."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    machinery = os.path.dirname(importlib.__file__) + os.sep

    def ours(frame: traceback.FrameSummary) -> bool:
        name = frame.filename
        return name.startswith((package, machinery, "<frozen importlib"))

    def prune(report: traceback.TracebackException | None) -> None:
        if report is None:
            return
        report.stack = traceback.StackSummary.from_list(
            [frame for frame in report.stack if not ours(frame)]
        )
        prune(report.__cause__ or report.__context__)

    report = traceback.TracebackException.from_exception(exc)
    prune(report)
    return "".join(report.format())


# Command line


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error here (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tinystream: error: {message} (see {self.prog} --help)\n")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0 to 65535)")
    return port


def _parser(prog: str) -> argparse.ArgumentParser:
    defaults = Config()
    parser = _Parser(
        prog=prog,
        description="Serve a tinystream handler (or Router) over HTTP/1.1.",
        epilog="Stop with Ctrl-C or SIGTERM (graceful; a second signal exits at once).",
    )
    add = parser.add_argument
    add("handler", help="the handler to serve, as MODULE:ATTR (e.g. app:router)")
    add("--version", action="version", version=f"tinystream {__version__}")
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add("--port", type=_port, default=8000, help="TCP port; 0 picks a free one (default: 8000)")
    add("--uds", metavar="PATH", help="listen on this Unix socket instead (default: none)")
    add(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes sharing one listening socket (default: %(default)s)",
    )
    add(
        "--reload",
        action="store_true",
        help="restart the server when a .py file under the current directory changes "
        "(development only) (default: off)",
    )
    add(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="(default: %(default)s)",
    )
    add(
        "--log-format",
        default="text",
        choices=_logging.FORMATS,
        help="text: timestamped lines; json: one object per line (default: %(default)s)",
    )
    add("--no-access-log", action="store_true", help="no per-response log line (default: logged)")
    seconds = [
        ("--keep-alive-timeout", defaults.keep_alive_timeout, "idle time between requests"),
        ("--header-timeout", defaults.header_timeout, "deadline for a whole request head"),
        ("--write-stall-timeout", defaults.write_stall_timeout, "a client not reading is cut off"),
        ("--graceful-timeout", defaults.graceful_timeout, "on shutdown, time for open responses"),
    ]
    for flag, default, text in seconds:
        add(flag, type=float, default=default, metavar="S", help=f"{text} (default: {default} s)")
    add(
        "--max-body-size",
        type=int,
        default=defaults.max_body_size,
        metavar="BYTES",
        help="largest request body, in bytes; larger gets 413 (default: %(default)s = 16 MiB)",
    )
    add(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        metavar="N",
        help="connections served at once; past it requests get 503 (default: %(default)s)",
    )
    add(
        "--half-close",
        action="store_true",
        help="keep answering a client that sent FIN (half-close) instead of treating it "
        "as gone (default: off)",
    )
    add("--certfile", metavar="FILE", help="TLS certificate chain, PEM (default: none: HTTP)")
    add("--keyfile", metavar="FILE", help="TLS private key, PEM (default: in --certfile)")
    # A listening socket inherited from the --reload supervisor (internal).
    add("--fd", type=int, help=argparse.SUPPRESS)
    # ASGI applications (FastAPI, Starlette ...): see tinystream.asgi.
    add(
        "--interface",
        choices=["auto", "native", "asgi"],
        default="auto",
        help="a native handler or an ASGI 3 app; auto recognises an ASGI app by its "
        "signature (default: %(default)s)",
    )
    add(
        "--lifespan",
        choices=["auto", "on", "off"],
        default="auto",
        help="ASGI lifespan events: on (required), off, or auto (if the app supports "
        "them) (default: %(default)s)",
    )
    add(
        "--root-path",
        default="",
        metavar="PATH",
        help="ASGI root_path, a proxy's path prefix (default: none)",
    )
    return parser


def _fail(message: str, status: int = 1) -> int:
    print(f"tinystream: error: {message}", file=sys.stderr)
    return status


def _address_error(exc: OSError, host: str, port: int, uds: str | None) -> str | None:
    """One line for an address that cannot be listened on, or None if ``exc`` is
    not about the address."""
    where = uds if uds is not None else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host!r}: {exc.strerror}"
    reasons = {
        errno.EADDRINUSE: "address already in use (another process is listening there)",
        errno.EADDRNOTAVAIL: "address not available on this machine",
        errno.EACCES: "permission denied"
        + (" (ports below 1024 need privileges)" if uds is None and 0 < port < 1024 else ""),
        errno.ENOENT: "no such directory",
    }
    reason = reasons.get(exc.errno or 0)
    if reason is None:
        return None
    return f"cannot listen on {where}: {reason}"


def main(argv: Sequence[str] | None = None, prog: str = "tinystream") -> int:
    """Run the command line; returns the exit status."""
    parser = _parser(prog)
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    _logging.configure(args.log_level, args.log_format)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if args.workers > 1 and args.uds:
        parser.error("--workers > 1 needs a TCP port, not --uds")
    if args.reload and args.workers > 1:
        parser.error("--reload runs one process: it cannot be combined with --workers")
    try:
        config = Config(
            keep_alive_timeout=args.keep_alive_timeout,
            header_timeout=args.header_timeout,
            write_stall_timeout=args.write_stall_timeout,
            graceful_timeout=args.graceful_timeout,
            max_body_size=args.max_body_size,
            max_connections=args.max_connections,
            access_log=not args.no_access_log,
            half_close=args.half_close,
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    try:
        context = ssl_context(None, args.certfile, args.keyfile)
    except CertificateError as exc:
        return _fail(str(exc))
    if args.reload:
        from ._reload import supervise_reload

        try:
            sock = bind_socket(args.host, args.port, args.uds)
        except (OSError, ValueError) as exc:
            return _fail(_bind_message(exc, args))
        child_args = [a for a in arguments if a != "--reload"]
        return supervise_reload(child_args, sock, args.uds, scheme="https" if context else "http")
    if args.workers > 1:
        os.environ[WORKERS_ENV] = str(args.workers)
    try:
        handler = load_handler(args.handler)
    except HandlerError as exc:
        return _fail(str(exc), 2)
    except Exception as exc:
        sys.stderr.write(_user_traceback(exc))
        module = args.handler.partition(":")[0]
        return _fail(f"importing {module!r} failed: {type(exc).__name__} (traceback above)")
    options: dict[str, Any] = {"config": config, "ssl": context}
    options.update(interface=args.interface, lifespan=args.lifespan, root_path=args.root_path)
    if args.fd is not None:
        return _serve_inherited(handler, args.fd, options)
    if args.workers > 1:
        try:
            sock = bind_socket(args.host, args.port)
        except OSError as exc:
            return _fail(_bind_message(exc, args))
        return _supervise(handler, sock, args.workers, options)
    if args.uds:
        options["uds"] = args.uds
    started = False

    def announce(server: Server) -> None:
        nonlocal started
        started = True
        logger.info("tinystream listening on %s", server.url)

    try:
        asyncio.run(run_until_signal(handler, args.host, args.port, options, on_ready=announce))
    except LifespanFailed as exc:
        return _fail(f"application startup failed: {exc}", 3)  # uvicorn's status
    except (OSError, ValueError) as exc:
        if started:
            raise
        return _fail(_bind_message(exc, args))
    return 0


def _bind_message(exc: OSError | ValueError, args: argparse.Namespace) -> str:
    if isinstance(exc, OSError):
        message = _address_error(exc, args.host, args.port, args.uds)
        if message is not None:
            return message
    if args.uds is not None:
        return f"cannot listen on {args.uds}: {exc}"
    return f"cannot listen on {args.host}:{args.port}: {exc}"


def _serve_inherited(handler: Any, fd: int, options: dict[str, Any]) -> int:
    """Serve on a socket a supervisor bound (``--reload``); it handles Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C: the parent decides
    sock = socket.socket(fileno=fd)

    def ready(server: Server) -> None:
        logger.info("application loaded (pid %d)", os.getpid())

    asyncio.run(
        run_until_signal(
            handler, "", 0, {**options, "sock": sock}, signals=(signal.SIGTERM,), on_ready=ready
        )
    )
    return 0


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _supervise(handler: Any, sock: socket.socket, workers: int, options: dict[str, Any]) -> int:
    """Fork ``workers`` processes that all accept on ``sock``, bound here once.

    One socket shared by every worker (as gunicorn does), rather than one per
    worker with ``SO_REUSEPORT``: the kernel then refuses a second, unrelated
    server on the same port instead of splitting the traffic with it, and the
    port stays listening while a worker restarts. SIGINT/SIGTERM are passed on
    to the workers (graceful); a second one kills them.
    """
    children: dict[int, int] = {}  # pid -> worker number
    ready_read, ready_write = os.pipe()
    stopping = 0  # SIGINT/SIGTERM received

    def spawn(number: int) -> None:
        # Signals wait while we fork: the parent's handler must see the new pid in
        # `children`, and the child must not run the parent's handler, inherited
        # (a SIGTERM would be lost there and the worker would serve on forever).
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        if stopping:  # a signal came while we decided to restart: no new worker
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
            return
        pid = os.fork()
        if pid:
            children[pid] = number
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
            return
        # The worker:
        os.close(ready_read)
        _logging.set_worker(number)
        # A terminal's Ctrl-C reaches the whole process group; only the parent
        # acts on it (it sends us SIGTERM), or one keypress would count twice.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Until asyncio installs the graceful handler, SIGTERM ends the worker
        # at once: it has nothing to drain yet.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)

        def report_ready(server: Server) -> None:
            logger.debug("worker %d (pid %d) listening", number, os.getpid())
            os.write(ready_write, b"!")

        code = 0
        try:
            asyncio.run(
                run_until_signal(
                    handler,
                    "",
                    0,
                    {**options, "sock": sock},
                    signals=(signal.SIGTERM,),
                    on_ready=report_ready,
                )
            )
        except BaseException:
            logger.exception("worker %d failed", number)
            code = 1
        finally:
            os._exit(code)

    for number in range(1, workers + 1):
        spawn(number)
    # Announce the URL only once every worker is up, so the first log line means
    # every process serves (connections made earlier would wait in the backlog).
    announced = 0
    while announced < workers:
        readable, _, _ = select.select([ready_read], [], [], 0.2)
        if readable:
            announced += len(os.read(ready_read, workers))
            continue
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            # A worker died before serving (its traceback is above): stop them all.
            logger.error(
                "tinystream: error: worker %d %s during start-up",
                children[pid],
                _describe_exit(status),
            )
            for other in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGKILL)
            return 1
    scheme = "https" if options.get("ssl") else "http"
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping += 1
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # already exited
                os.kill(pid, signal.SIGTERM if stopping == 1 else signal.SIGKILL)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # Announced only now: a signal sent as soon as the line is read must be passed
    # on to the workers, not end this process at once and orphan them.
    logger.info("tinystream listening on %s://%s:%d (%d workers)", scheme, shown, port, workers)
    last_restart = 0.0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        number = children.pop(pid)
        if stopping:
            continue
        logger.warning("worker %d (pid %d) %s; restarting it", number, pid, _describe_exit(status))
        wait = RESTART_DELAY - (time.monotonic() - last_restart)
        if wait > 0:
            time.sleep(wait)
        last_restart = time.monotonic()
        spawn(number)
    sock.close()
    return 0
