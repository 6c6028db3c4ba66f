"""Exceptions that handlers raise or see."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

__all__ = ["ClientDisconnected", "HTTPError"]


class HTTPError(Exception):
    """Raise from a handler to answer with ``status`` instead of a response.

    Raised before any byte of the response is sent - by the handler, or by a
    stream's producer before its first item (the head waits up to the server's
    ``first_item_wait`` for it) - it becomes a plain-text response with that
    status and ``detail`` as its body: the way to refuse a stream before it
    starts. ``headers`` are added to that response (``Allow`` for 405,
    ``Retry-After`` for 503 ...). Raised by a producer after the head went out,
    it can only cut the body short, like any other exception.

    Raises:
        ValueError: ``status`` is not a 4xx or 5xx code.
    """

    def __init__(
        self, status: int, detail: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be an int from 400 to 599, got {status!r}")
        if detail is None:
            try:
                detail = HTTPStatus(status).phrase
            except ValueError:
                detail = "Error"
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.detail}"


class ClientDisconnected(ConnectionError):
    """The client went away while the request body was being read."""
