"""Case-insensitive, multi-valued request headers and query parameters.

Both are read-only views built lazily from what the parser produced, because most
handlers look at two or three headers and never at the query string.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar, overload
from urllib.parse import parse_qsl

__all__ = ["Headers", "QueryParams"]

_T = TypeVar("_T")


class Headers(Mapping[str, str]):
    """Request header fields, as received: case-insensitive and multi-valued.

    ``headers["accept"]`` and ``headers.get("Accept")`` give the *first* value;
    :meth:`get_all` gives every value in arrival order. Names are matched
    case-insensitively (RFC 9110 §5.1); values are decoded as Latin-1, which maps
    every byte to one character and so never fails (RFC 9110 §5.5 leaves
    non-ASCII octets opaque).
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: Sequence[tuple[bytes, bytes]] = ()) -> None:
        # h11 hands us lower-cased names; a user building Headers by hand may not.
        self._raw = [(name.lower(), value) for name, value in raw]

    @classmethod
    def from_lowercase(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        """Headers from fields whose names are lower-case already (as h11 gives them).

        Takes ``raw`` as it is, without a copy: the server's hot path.
        """
        headers = cls.__new__(cls)
        headers._raw = raw
        return headers

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        """The fields as ``(lower-case name, value)`` byte pairs, in arrival order."""
        return list(self._raw)

    def __getitem__(self, name: str) -> str:
        key = name.lower().encode("latin-1")
        for field, value in self._raw:
            if field == key:
                return value.decode("latin-1")
        raise KeyError(name)

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, default: str, /) -> str: ...
    @overload
    def get(self, name: str, default: _T, /) -> str | _T: ...
    def get(self, name: str, default: object = None, /) -> object:
        """The first value of field ``name``, or ``default``."""
        key = name.lower().encode("latin-1")
        for field, value in self._raw:
            if field == key:
                return value.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of field ``name``, in arrival order (``[]`` if absent)."""
        key = name.lower().encode("latin-1")
        return [value.decode("latin-1") for field, value in self._raw if field == key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower().encode("latin-1")
        return any(field == key for field, _ in self._raw)

    def __iter__(self) -> Iterator[str]:
        seen: set[bytes] = set()
        for field, _ in self._raw:
            if field not in seen:
                seen.add(field)
                yield field.decode("latin-1")

    def __len__(self) -> int:
        return len({field for field, _ in self._raw})

    def items_all(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair, repeated names included."""
        return [(f.decode("latin-1"), v.decode("latin-1")) for f, v in self._raw]

    def __repr__(self) -> str:
        return f"Headers({self.items_all()!r})"


class QueryParams(Mapping[str, str]):
    """Query string parameters: multi-valued, in order, blank values kept.

    ``query_params.get(key)`` gives the first value, :meth:`get_all` every value.
    Percent-escapes and ``+`` are decoded as in HTML form encoding; invalid UTF-8
    becomes U+FFFD rather than an error, since a query string is user input that a
    handler may simply ignore.
    """

    __slots__ = ("_items",)

    def __init__(self, query: str = "") -> None:
        self._items = parse_qsl(query, keep_blank_values=True, errors="replace")

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: object = None, /) -> object:
        """The first value for ``key``, or ``default``."""
        for name, value in self._items:
            if name == key:
                return value
        return default

    def get_all(self, key: str) -> list[str]:
        """Every value for ``key``, in order (``[]`` if absent)."""
        return [value for name, value in self._items if name == key]

    def __getitem__(self, key: str) -> str:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._items))

    def __len__(self) -> int:
        return len(dict.fromkeys(name for name, _ in self._items))

    def items_all(self) -> list[tuple[str, str]]:
        """Every ``(key, value)`` pair, repeated keys included."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"QueryParams({self._items!r})"
