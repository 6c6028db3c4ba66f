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
from typing import Any

from ._asgi_errors import ASGIProtocolError
from .responses import FIELD_NAME, FIELD_VALUE_CONTROL

__all__ = ["Head", "parse_start"]

#: App fields that passed every check unchanged (a lower-case token name, a value
#: without controls or surrounding whitespace, not a framing field), remembered:
#: an app sends the same few fields again and again, and a set lookup costs a
#: fraction of the checks. Bounded: once full, new fields are checked every time.
_PLAIN_FIELDS: set[tuple[bytes, bytes]] = set()
_PLAIN_FIELDS_MAX = 1024


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
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ASGIProtocolError(f"ASGI application sent an invalid status {status!r}")
    headers: list[tuple[bytes, bytes]] = []
    content_length: int | None = None
    event_stream = False
    for field in message.get("headers", ()):
        try:
            known = field in _PLAIN_FIELDS
        except TypeError:  # a list, or a bytearray in it: checked below
            known = False
        if known:
            if field[0] == b"content-type" and field[1].startswith(b"text/event-stream"):
                event_stream = True
            headers.append(field)
            continue
        name, value = field
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            name, value = bytes(name), bytes(value)  # bytearray; str raises TypeError
        if not name.islower():
            name = name.lower()  # (a copy only when needed: it lives as long as the stream)
        value = value.strip(b" \t")
        if not FIELD_NAME.fullmatch(name) or FIELD_VALUE_CONTROL.search(value):
            raise ASGIProtocolError(f"ASGI application sent an invalid header {name!r}: {value!r}")
        if name == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise ASGIProtocolError(
                    f"ASGI application sent an invalid Content-Length {value!r}"
                )
            if status != 204:  # RFC 9110 §8.6: never on a 204
                content_length = int(value)
            continue
        if name == b"transfer-encoding":
            if value.lower() != b"chunked":
                raise ASGIProtocolError(f"ASGI application sent Transfer-Encoding {value!r}")
            continue
        if name == b"content-type" and value.startswith(b"text/event-stream"):
            event_stream = True
        if type(field) is tuple and name is field[0] and value is field[1]:
            headers.append(field)  # the app's own pair, unchanged: no copy to keep
            # (bytes are immutable: a remembered field stays what was checked)
            immutable = type(name) is bytes and type(value) is bytes
            if immutable and len(_PLAIN_FIELDS) < _PLAIN_FIELDS_MAX:
                _PLAIN_FIELDS.add(field)
        else:
            headers.append((name, value))
    if status == 304 and content_length is not None:
        # Allowed on a 304 (RFC 9110 §8.6), which gets no body (and no length of ours).
        headers.append((b"content-length", b"%d" % content_length))
    return Head(status, headers, content_length, event_stream)
