"""An ASGI ``http.response.start`` message, checked: the status, the fields, the framing.

Pure: a message in, a :class:`Head` out or :class:`ASGIProtocolError` raised; no
``asyncio``. Every field the app sends is checked here, before any byte goes out,
so a bad one gives a 500 instead of a corrupt or injected head. The framing is
the server's: ``Content-Length`` is kept (and enforced by the cycle), and
``Transfer-Encoding: chunked`` is dropped (chunked or close-delimited, as the
client allows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ._asgi_errors import ASGIProtocolError
from .responses import FIELD_NAME, FIELD_VALUE_CONTROL

__all__ = ["Head", "parse_start"]

#: App fields that passed every check unchanged, remembered with what they mean:
#: ``_PLAIN`` (passed on as they are), ``_EVENT_STREAM`` (a ``text/event-stream``
#: Content-Type), or an int (a Content-Length of that many bytes). An app sends the
#: same few fields again and again, and a dict lookup costs a fraction of the
#: checks. Bounded: once full, new fields are checked every time.
_CHECKED: dict[tuple[bytes, bytes], object] = {}
_CHECKED_MAX = 1024
_PLAIN = object()
_EVENT_STREAM = object()
_UNKNOWN = object()


class Head:
    """A checked ``http.response.start``."""

    __slots__ = ("content_length", "event_stream", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        event_stream: bool,
    ) -> None:
        self.status = status
        self.headers = headers  # lower-case names; no Content-Length, no Transfer-Encoding
        self.content_length = content_length
        self.event_stream = event_stream  # Content-Type: text/event-stream


def parse_start(message: Mapping[str, Any]) -> Head:
    """Check an ``http.response.start`` message.

    Raises:
        ASGIProtocolError: a status outside 200-599, a field name that is no token,
            a value with a control character, an invalid or contradictory
            ``Content-Length``, a ``Transfer-Encoding`` other than ``chunked``.
        TypeError: a field name or value that is a ``str``.
    """
    status = message["status"]
    if type(status) is not int:
        if isinstance(status, bool) or not isinstance(status, int):
            raise ASGIProtocolError(f"ASGI application sent an invalid status {status!r}")
        status = int(status)  # an IntEnum such as HTTPStatus.OK
    if not 200 <= status <= 599:
        raise ASGIProtocolError(f"ASGI application sent an invalid status {status!r}")
    headers: list[tuple[bytes, bytes]] = []
    content_length: int | None = None
    event_stream = False
    for field in message.get("headers", ()):
        try:
            meaning = _CHECKED.get(field, _UNKNOWN)
        except (TypeError, ValueError):  # a list, a bytearray, a writable memoryview
            meaning = _UNKNOWN
        if meaning is _UNKNOWN:
            meaning = _check_field(field)
        if meaning is _PLAIN or meaning is _EVENT_STREAM:
            event_stream = event_stream or meaning is _EVENT_STREAM
            headers.append(field)
        elif type(meaning) is int:
            if content_length is not None and meaning != content_length:
                raise ASGIProtocolError(
                    f"ASGI application sent an invalid Content-Length {field[1]!r}"
                )
            if status != 204:  # RFC 9110 §8.6: never on a 204
                content_length = meaning
        elif meaning is not None:  # a normalised copy of the app's field
            copy = cast("tuple[bytes, bytes]", meaning)
            if copy[0] == b"content-type" and copy[1].startswith(b"text/event-stream"):
                event_stream = True
            headers.append(copy)
    return Head(status, headers, content_length, event_stream)


def _check_field(field: Any) -> object:
    """What a field the app sent means (see ``_CHECKED``); remembered when it can be.

    Returns ``_PLAIN``, ``_EVENT_STREAM``, a Content-Length, None (a
    ``Transfer-Encoding: chunked``, dropped) or a normalised ``(name, value)`` copy.
    """
    name, value = field
    if not isinstance(name, bytes) or not isinstance(value, bytes):
        name, value = bytes(name), bytes(value)  # bytearray; str raises TypeError
    if not name.islower():
        name = name.lower()  # (a copy only when needed: it lives as long as the stream)
    value = value.strip(b" \t")
    if not FIELD_NAME.fullmatch(name) or FIELD_VALUE_CONTROL.search(value):
        raise ASGIProtocolError(f"ASGI application sent an invalid header {name!r}: {value!r}")
    meaning: object
    if name == b"content-length":
        if not value.isdigit():
            raise ASGIProtocolError(f"ASGI application sent an invalid Content-Length {value!r}")
        meaning = int(value)
    elif name == b"transfer-encoding":
        if value.lower() != b"chunked":
            raise ASGIProtocolError(f"ASGI application sent Transfer-Encoding {value!r}")
        meaning = None
    elif name is not field[0] or value is not field[1] or type(field) is not tuple:
        return (name, value)  # normalised: a copy, not remembered
    elif name == b"content-type" and value.startswith(b"text/event-stream"):
        meaning = _EVENT_STREAM
    else:
        meaning = _PLAIN
    # Only a tuple of bytes is remembered: immutable, it stays what was checked.
    immutable = type(field) is tuple and type(field[0]) is bytes and type(field[1]) is bytes
    if immutable and len(_CHECKED) < _CHECKED_MAX:
        _CHECKED[field] = meaning
    return meaning
