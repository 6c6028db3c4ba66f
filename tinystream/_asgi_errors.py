"""How an ASGI application broke the protocol, and how its end is told apart from ours.

:class:`ASGIProtocolError` is raised from the app's ``send()`` when a message is
wrong. When the server cut a response short it cancelled the app and failed its
sends; whatever the app then raises (wrapped by Starlette, grouped by anyio) is
recognised by :func:`caused_by_disconnect` and not logged, and
:func:`release_frames` lets the app's generators be finalised at once.
"""

from __future__ import annotations

import asyncio
import traceback

from .errors import ClientDisconnected

__all__ = ["ASGIProtocolError", "caused_by_disconnect", "exception_chain", "release_frames"]


class ASGIProtocolError(RuntimeError):
    """The application broke the ASGI HTTP protocol (a second start, a body after
    ``more_body=False``, an invalid header, a body longer or shorter than its
    ``Content-Length`` ...). Raised from its ``send()``; the response is ended."""


def release_frames(exc: BaseException) -> None:
    """Drop the locals of the frames in the traceback of ``exc`` (which ended the app).

    Framework code puts context managers on the way out, and an ``__exit__`` frame
    holds the exception it saw: traceback -> frame -> exception -> traceback, a
    cycle that only the cyclic GC breaks, seconds later. Meanwhile it keeps alive
    what those frames refer to - the response and its body generator, parked at
    ``yield`` while the framework waited in ``send()``, whose ``finally`` would
    wait for the GC too. Cleared, the generator is freed at once and asyncio's
    finaliser closes it (its ``finally`` runs) within a loop iteration.
    """
    for error in exception_chain(exc):
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it carries: causes, contexts, group members."""
    seen: set[int] = set()
    found: list[BaseException] = []
    stack = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        found.append(error)
        stack.extend(getattr(error, "exceptions", ()))
        stack.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return found


def caused_by_disconnect(exc: BaseException) -> bool:
    """Did ``exc`` come from a send() we failed or a cancellation we made?

    Starlette re-raises our OSError as its ClientDisconnect, anyio wraps it in
    exception groups: follow causes, contexts and groups.
    """
    return any(
        isinstance(error, (ClientDisconnected, asyncio.CancelledError))
        for error in exception_chain(exc)
    )
