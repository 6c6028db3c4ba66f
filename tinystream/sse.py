"""Server-Sent Events: the ``text/event-stream`` wire format, both ways.

This module is pure: objects in, bytes out (and back), no I/O, no event loop.
The format is the WHATWG HTML Standard's, section 9.2 "Server-sent events"
(https://html.spec.whatwg.org/multipage/server-sent-events.html):

- An event is a block of ``field: value`` lines ended by an empty line.
- ``data`` may span lines: each line of the payload becomes its own ``data:``
  line, and the client joins them with ``\\n``. Lines end with CRLF, LF or CR,
  so a payload's ``\\r\\n`` or ``\\r`` comes back as ``\\n`` - the one change the
  format makes to data.
- ``event`` and ``id`` are single-line by nature: a CR or LF there would start a
  new field, letting whoever controls the value inject events. We refuse such
  values with ``ValueError`` instead of stripping them (stripping would silently
  change an id a client later sends back as ``Last-Event-ID``). An ``id`` with a
  NUL is ignored by every conforming client, so it is refused too.
- A line starting with ``:`` is a comment: clients ignore it, which makes it the
  keep-alive ping.

Encoding is on the hot path of every stream: the common event - one line of data,
perhaps an id and a name - costs a few string concatenations and one UTF-8 encode.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PING",
    "EventStreamDecoder",
    "EventStreamError",
    "ServerSentEvent",
    "SharedEvent",
    "encode_data",
]

#: The keep-alive comment. Clients ignore it; proxies and NATs see traffic.
PING = b": ping\n\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FIELDS = ("data", "event", "id", "retry", "comment")


def _single_line(field: str, value: object, forbid_nul: bool) -> str:
    if not isinstance(value, str):
        raise TypeError(f"ServerSentEvent {field} must be a str, got {type(value).__name__}")
    if "\n" in value or "\r" in value:
        raise ValueError(
            f"ServerSentEvent {field} must not contain CR or LF (it would start a new "
            f"field): {value!r}"
        )
    if forbid_nul and "\0" in value:
        raise ValueError(f"ServerSentEvent {field} must not contain NUL: {value!r}")
    return value


def _retry(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ServerSentEvent retry must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"ServerSentEvent retry must be >= 0, got {value!r}")
    return value


def _data_lines(prefix: str, text: str) -> str:
    if "\n" not in text and "\r" not in text:
        return prefix + text + "\n"
    return "".join(prefix + line + "\n" for line in _LINE_BREAK.split(text))


def encode_data(data: str) -> bytes:
    """One event carrying only ``data`` (the commonest event, kept cheapest)."""
    if "\n" not in data and "\r" not in data:
        return ("data: " + data + "\n\n").encode("utf-8")
    return (_data_lines("data: ", data) + "\n").encode("utf-8")


class ServerSentEvent:
    """One event of an event stream.

    Args:
        data: the payload; several lines become several ``data:`` lines.
        event: the event name (``addEventListener(name, ...)`` in a browser);
            ``None`` means the default ``message``.
        id: the event id, which a reconnecting browser sends back as
            ``Last-Event-ID``.
        retry: the reconnection delay the client should use, in milliseconds.
        comment: a comment (ignored by clients).

    Raises:
        TypeError: a field has the wrong type.
        ValueError: ``event`` or ``id`` contains CR or LF, ``id`` contains NUL,
            or ``retry`` is negative.
    """

    __slots__ = _FIELDS

    def __init__(
        self,
        data: str | None = None,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        if data is not None and not isinstance(data, str):
            raise TypeError(f"ServerSentEvent data must be a str, got {type(data).__name__}")
        if comment is not None and not isinstance(comment, str):
            raise TypeError(f"ServerSentEvent comment must be a str, got {type(comment).__name__}")
        self.data = data
        self.event = None if event is None else _single_line("event", event, False)
        self.id = None if id is None else _single_line("id", id, True)
        self.retry = None if retry is None else _retry(retry)
        self.comment = comment

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ServerSentEvent:
        """Build from a mapping with the keys of the constructor.

        Raises:
            TypeError: an unknown key, or a field of the wrong type.
        """
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise TypeError(
                f"unknown ServerSentEvent field(s) {sorted(unknown)}; known: {list(_FIELDS)}"
            )
        return cls(**fields)

    def encode(self) -> bytes:
        """The event in the wire format, ending with the empty line that dispatches it.

        Raises:
            ValueError / TypeError: a field assigned after construction breaks the
                rules the constructor checks (checked again here: a CR or LF put in
                ``event`` or ``id`` later must not inject an event either).
        """
        text = ""
        if self.comment is not None:
            text = _data_lines(": ", self.comment)
        if self.event is not None:
            text += "event: " + _single_line("event", self.event, False) + "\n"
        if self.id is not None:
            text += "id: " + _single_line("id", self.id, True) + "\n"
        if self.retry is not None:
            text += f"retry: {_retry(self.retry)}\n"
        if self.data is not None:
            text += _data_lines("data: ", self.data)
        return (text + "\n").encode("utf-8")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerSentEvent):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _FIELDS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in _FIELDS))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f}={getattr(self, f)!r}" for f in _FIELDS if getattr(self, f) is not None
        )
        return f"ServerSentEvent({shown})"


class SharedEvent(ServerSentEvent):
    """A :class:`ServerSentEvent` that cannot change, encoded once when built.

    What a :class:`~tinystream.broadcast.Broadcast` delivers: one object, and one
    ``bytes`` of wire format, for every subscriber, instead of an encoding each.

    Raises:
        AttributeError: on any attempt to change a field after construction.
    """

    __slots__ = ("_wire",)
    _wire: bytes

    def __init__(
        self,
        data: str | None = None,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        super().__init__(data, event, id, retry, comment)
        object.__setattr__(self, "_wire", super().encode())

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "_wire"):
            raise AttributeError(
                "a shared event goes to every subscriber as it is: build a new ServerSentEvent"
            )
        object.__setattr__(self, name, value)

    def encode(self) -> bytes:
        """The wire format, encoded when the event was built (the same ``bytes`` each time)."""
        return self._wire


class EventStreamError(ValueError):
    """The stream broke a limit of the decoder (an event larger than ``max_event_size``)."""


#: Default bound on one event's size in the decoder: generous (browsers have
#: none), but finite, so a broken or hostile stream cannot grow memory forever.
MAX_EVENT_SIZE = 16 * 1024 * 1024  # characters


class EventStreamDecoder:
    """Incremental, WHATWG-conformant ``text/event-stream`` parser.

    Feed bytes in pieces of any size (a CRLF or a UTF-8 character may be split
    across pieces; a leading BOM is dropped); :meth:`feed` returns the events
    those pieces completed. Decoded events carry ``data``, ``event`` (``None``
    for the default ``message``), ``id`` (the id field of *that* event, if it
    had one) and ``retry`` (if that event set one). The state a browser keeps
    across events is on the decoder: :attr:`last_event_id` and :attr:`retry`.

    As the standard says: lines without a colon are fields with an empty value,
    one space after the colon is dropped, an ``id`` containing NUL is ignored, a
    ``retry`` that is not all ASCII digits is ignored, unknown fields are ignored,
    and an event with no data is not dispatched (its id still counts). A final
    event without its empty line is discarded at the end of the stream.

    Args:
        max_event_size: the largest event accepted, in characters.

    Raises:
        ValueError: ``max_event_size`` is not positive.
        EventStreamError: (from :meth:`feed`) an event grew past ``max_event_size``.
    """

    def __init__(self, max_event_size: int = MAX_EVENT_SIZE) -> None:
        if max_event_size <= 0:
            raise ValueError(f"max_event_size must be > 0, got {max_event_size!r}")
        self.max_event_size = max_event_size
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False  # the BOM check is done
        self._skip_lf = False  # the last piece ended in CR: a leading LF belongs to it
        self._size = 0
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None  # the id field of the event being read
        self._id_buffer = ""  # WHATWG's "last event ID buffer": survives dispatches
        self._retry: int | None = None
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Parse the next piece of the stream; return the events it completed.

        Raises:
            EventStreamError: an event grew past ``max_event_size`` characters.
        """
        text = self._decoder.decode(data)
        if not self._started:
            if not text:
                return []
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf and text:
            if text[0] == "\n":
                text = text[1:]
            self._skip_lf = False
        buffer = self._buffer + text if self._buffer else text
        events: list[ServerSentEvent] = []
        position = 0
        for match in _LINE_BREAK.finditer(buffer):
            line = buffer[position : match.start()]
            position = match.end()
            if match.group() == "\r" and position == len(buffer):
                self._skip_lf = True  # an LF may follow in the next piece
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buffer = buffer[position:]
        if self._size + len(self._buffer) > self.max_event_size:
            raise EventStreamError(
                f"event larger than max_event_size ({self.max_event_size} characters)"
            )
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # a comment
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self.max_event_size:
                raise EventStreamError(
                    f"event larger than max_event_size ({self.max_event_size} characters)"
                )
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            # Only ASCII digits (str.isdigit alone would accept "²"); otherwise ignored.
            self._retry = int(value)
            self.retry = self._retry
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event, event_id, retry = self._data, self._event, self._id, self._retry
        self._data, self._event, self._id, self._retry, self._size = [], None, None, None, 0
        # Set at dispatch, even for an event without data; an event cut off by the
        # end of the stream never gets here, so its id does not count.
        self.last_event_id = self._id_buffer
        if not data:
            return None
        decoded = ServerSentEvent.__new__(ServerSentEvent)
        decoded.data = "\n".join(data)
        decoded.event = event or None
        decoded.id = event_id
        decoded.retry = retry
        decoded.comment = None
        return decoded
