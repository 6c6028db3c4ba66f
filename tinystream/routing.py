"""A small path router: ``/items/{item_id}`` patterns, 404 and 405 with ``Allow``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ._threads import shared_pool
from .errors import HTTPError
from .request import Request
from .responses import Response, StreamingResponse

__all__ = ["Router"]

RouteHandler = Callable[[Request], Awaitable[Any] | Any]
# {name} matches one path segment; {name:path} matches the rest of the path, which
# may be empty (as in Starlette): "/static/{path:path}" matches "/static/" too.
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")


def _compile(pattern: str) -> re.Pattern[str] | None:
    """A regex for a pattern with parameters, or None for a static path."""
    if not pattern.startswith("/"):
        raise ValueError(f"route path must start with '/', got {pattern!r}")
    if "{" not in pattern:
        return None
    parts: list[str] = []
    position = 0
    names: set[str] = set()
    for match in _PARAM.finditer(pattern):
        parts.append(re.escape(pattern[position : match.start()]))
        name, kind = match.group(1), match.group(2)
        if name in names:
            raise ValueError(f"route {pattern!r} uses parameter {name!r} twice")
        names.add(name)
        parts.append(f"(?P<{name}>.*)" if kind == "path" else f"(?P<{name}>[^/]+)")
        position = match.end()
    rest = pattern[position:]
    if "{" in rest or "}" in rest or any("{" in p or "}" in p for p in parts[::2]):
        raise ValueError(f"malformed parameter in route {pattern!r}")
    parts.append(re.escape(rest))
    return re.compile("".join(parts))


class _Route:
    __slots__ = ("handlers", "implicit_head", "pattern", "regex")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.regex = _compile(pattern)
        self.handlers: dict[str, tuple[RouteHandler, bool]] = {}
        self.implicit_head = False  # HEAD answered by the GET handler

    def allow(self) -> str:
        return ", ".join(sorted(self.handlers))


class Router:
    """Dispatches on path and method; itself a handler.

    ``@router.get("/items/{item_id}")`` registers a GET (and HEAD) route;
    ``request.path_params["item_id"]`` holds the captured segment. Unknown
    paths answer 404; a known path with another method answers 405 with an
    ``Allow`` field. Plain ``def`` handlers run in a worker thread.
    """

    def __init__(self) -> None:
        self._static: dict[str, _Route] = {}
        self._dynamic: list[_Route] = []

    def add(self, path: str, handler: RouteHandler, methods: Iterable[str] = ("GET",)) -> None:
        """Route ``methods`` on ``path`` to ``handler``.

        Raises:
            ValueError: a malformed path, no methods, or a method already routed here.
            TypeError: ``handler`` is not callable.
        """
        if not callable(handler):
            raise TypeError(f"route handler must be callable, got {handler!r}")
        wanted = [m.upper() for m in ([methods] if isinstance(methods, str) else methods)]
        if not wanted:
            raise ValueError(f"route {path!r} needs at least one method")
        route = self._static.get(path) or next(
            (r for r in self._dynamic if r.pattern == path), None
        )
        if route is None:
            route = _Route(path)
            if route.regex is None:
                self._static[path] = route
            else:
                self._dynamic.append(route)
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004
        )
        for method in wanted:
            if method in route.handlers and not (method == "HEAD" and route.implicit_head):
                raise ValueError(f"{method} {path} is already routed")
        for method in wanted:
            route.handlers[method] = (handler, is_async)
        if "HEAD" in wanted:
            route.implicit_head = False
        elif "GET" in wanted and "HEAD" not in route.handlers:
            # RFC 9110 §9.3.2: HEAD is GET without the body (the server drops it).
            route.handlers["HEAD"] = (handler, is_async)
            route.implicit_head = True

    def route(
        self, path: str, methods: Iterable[str] = ("GET",)
    ) -> Callable[[RouteHandler], RouteHandler]:
        """Decorator form of :meth:`add`: ``@router.route("/x", methods=("GET", "POST"))``.

        Returns:
            A decorator that registers the function and returns it unchanged.

        Raises:
            ValueError: as for :meth:`add`, when the decorator is applied.
        """

        def register(handler: RouteHandler) -> RouteHandler:
            self.add(path, handler, methods)
            return handler

        return register

    def get(self, path: str) -> Callable[[RouteHandler], RouteHandler]:
        """Decorator: route GET requests on ``path`` to the function.

        HEAD requests go to it too (RFC 9110 §9.3.2: HEAD is GET without the body;
        the server drops the body), unless HEAD has a route of its own.
        """
        return self.route(path, ("GET",))

    def post(self, path: str) -> Callable[[RouteHandler], RouteHandler]:
        """Decorator: route POST requests on ``path`` to the function."""
        return self.route(path, ("POST",))

    def put(self, path: str) -> Callable[[RouteHandler], RouteHandler]:
        """Decorator: route PUT requests on ``path`` to the function."""
        return self.route(path, ("PUT",))

    def patch(self, path: str) -> Callable[[RouteHandler], RouteHandler]:
        """Decorator: route PATCH requests on ``path`` to the function."""
        return self.route(path, ("PATCH",))

    def delete(self, path: str) -> Callable[[RouteHandler], RouteHandler]:
        """Decorator: route DELETE requests on ``path`` to the function."""
        return self.route(path, ("DELETE",))

    def _match(self, path: str) -> tuple[_Route, dict[str, str]] | None:
        route = self._static.get(path)
        if route is not None:
            return route, {}
        for route in self._dynamic:
            assert route.regex is not None
            match = route.regex.fullmatch(path)
            if match:
                return route, match.groupdict()
        return None

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        """Dispatch ``request`` to its route's handler (the router is a handler itself).

        Fills ``request.path_params`` with the captured segments.

        Raises:
            HTTPError: 404 for an unknown path; 405 with ``Allow`` for a known path
                and another method; whatever the route's handler raises.
        """
        found = self._match(request.path)
        if found is None:
            raise HTTPError(404)
        route, params = found
        entry = route.handlers.get(request.method)
        if entry is None:
            raise HTTPError(405, headers={"Allow": route.allow()})
        request.path_params = params
        handler, is_async = entry
        if is_async:
            return await handler(request)  # type: ignore[no-any-return]
        response: Response | StreamingResponse = await shared_pool().run(handler, request)  # type: ignore[arg-type]
        return response
