"""``python -m tinystream MODULE:ATTR``: serve a handler from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._lifespan import LifespanFailed
from .config import Config
from .serving import run_until_signal

__all__ = ["load_handler", "main"]

logger = logging.getLogger("tinystream")


class HandlerError(Exception):
    """``MODULE:ATTR`` does not name a usable handler; the message says why."""


def load_handler(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted) and return the callable it names.

    The current directory is importable, as with ``python -m``.

    Raises:
        HandlerError: malformed spec, module not found, attribute missing, not callable.
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinystream", description="Serve a tinystream handler."
    )
    defaults = Config()
    parser.add_argument("handler", help="the handler to serve, as MODULE:ATTR")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument("--uds", metavar="PATH", help="listen on a Unix socket instead")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    parser.add_argument("--no-access-log", action="store_true", help="no per-response log line")
    parser.add_argument("--keep-alive-timeout", type=float, default=defaults.keep_alive_timeout)
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout)
    parser.add_argument("--write-stall-timeout", type=float, default=defaults.write_stall_timeout)
    parser.add_argument("--graceful-timeout", type=float, default=defaults.graceful_timeout)
    parser.add_argument(
        "--max-body-size", type=int, default=defaults.max_body_size, metavar="BYTES"
    )
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument(
        "--half-close",
        action="store_true",
        help="keep answering a client that sent FIN (half-close) instead of treating it as gone",
    )
    parser.add_argument("--certfile", help="TLS certificate chain (PEM)")
    parser.add_argument("--keyfile", help="TLS private key (PEM)")
    # ASGI applications (FastAPI, Starlette ...): see tinystream.asgi.
    parser.add_argument(
        "--interface",
        choices=["auto", "native", "asgi"],
        default="auto",
        help="native handler or ASGI 3 app; auto detects an ASGI app by its signature",
    )
    parser.add_argument(
        "--lifespan",
        choices=["auto", "on", "off"],
        default="auto",
        help="ASGI lifespan events: on (required), off, auto (if the app supports them)",
    )
    parser.add_argument("--root-path", default="", help="ASGI root_path (a proxy's path prefix)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    try:
        handler = load_handler(args.handler)
    except HandlerError as exc:
        print(f"tinystream: error: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if args.workers > 1 and args.uds:
        parser.error("--workers > 1 needs a TCP port, not --uds")
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
    options: dict[str, Any] = {"config": config, "certfile": args.certfile, "keyfile": args.keyfile}
    if args.uds:
        options["uds"] = args.uds
    options.update(interface=args.interface, lifespan=args.lifespan, root_path=args.root_path)
    if args.workers == 1:
        try:
            asyncio.run(run_until_signal(handler, args.host, args.port, options))
        except LifespanFailed as exc:
            print(f"tinystream: error: application startup failed: {exc}", file=sys.stderr)
            return 3  # uvicorn's status for a failed startup
        return 0
    return _supervise(handler, args.host, args.port, args.workers, options)


def _supervise(handler: Any, host: str, port: int, workers: int, options: dict[str, Any]) -> int:
    """Fork ``workers`` processes that each listen on ``host:port`` with SO_REUSEPORT.

    The parent binds the port first (resolving ``--port 0``) and keeps that socket
    bound but not listening, so the port stays ours; the kernel spreads new
    connections over the workers' listening sockets. SIGINT/SIGTERM are passed
    on to the workers (graceful); a second one kills them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    anchor = socket.socket(family, socket.SOCK_STREAM)
    anchor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    anchor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    anchor.bind((host, port))
    port = anchor.getsockname()[1]
    children: dict[int, int] = {}  # pid -> worker number
    ready_read, ready_write = os.pipe()

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            anchor.close()
            os.close(ready_read)
            # A terminal's Ctrl-C reaches the whole process group; only the parent
            # acts on it (it sends us SIGTERM), or one keypress would count twice.
            signal.signal(signal.SIGINT, signal.SIG_IGN)

            def report_ready(server: Any) -> None:
                logger.debug("worker %d (pid %d) listening", number, os.getpid())
                os.write(ready_write, b"!")

            code = 0
            try:
                asyncio.run(
                    run_until_signal(
                        handler,
                        host,
                        port,
                        {**options, "reuse_port": True},
                        signals=(signal.SIGTERM,),
                        on_ready=report_ready,
                    )
                )
            except BaseException:
                logger.exception("worker %d failed", number)
                code = 1
            finally:
                os._exit(code)
        children[pid] = number

    for number in range(workers):
        spawn(number)
    # Announce the URL only once every worker listens, so a client that connects
    # as soon as it reads the line is never refused.
    announced = 0
    while announced < workers:
        readable, _, _ = select.select([ready_read], [], [], 0.2)
        if readable:
            announced += len(os.read(ready_read, workers))
            continue
        pid, _status = os.waitpid(-1, os.WNOHANG)
        if pid:
            # A worker died before listening (its traceback is above): stop them all.
            logger.error("tinystream: error: worker %d exited during start-up", children[pid])
            for other in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGKILL)
            return 1
    scheme = "https" if options.get("certfile") else "http"
    shown = f"[{host}]" if ":" in host else host
    logger.info("tinystream listening on %s://%s:%d (%d workers)", scheme, shown, port, workers)
    stopping = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping += 1
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # already exited
                os.kill(pid, signal.SIGTERM if stopping == 1 else signal.SIGKILL)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
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
        logger.warning("worker %d exited (status %d); restarting it", number, status)
        # Never restart in a tight loop: a worker that dies at start would fork-bomb.
        wait = 1.0 - (time.monotonic() - last_restart)
        if wait > 0:
            time.sleep(wait)
        last_restart = time.monotonic()
        spawn(number)
    anchor.close()
    return 0
