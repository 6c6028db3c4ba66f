r"""Hello: the smallest tinystream application.

What it teaches: a handler is one ``async def`` that takes a :class:`~tinystream.Request`
and returns a :class:`~tinystream.Response`. No router, no framework: the handler
is called for every request, whatever its method and path.

Run it:   python -m tinystream examples.hello:app
Then try:
  curl -i http://127.0.0.1:8000/              the whole response: status line, fields, body
  curl -i http://127.0.0.1:8000/?name=Ada     a query parameter
  curl -I http://127.0.0.1:8000/              HEAD: the same fields, no body (RFC 9110 §9.3.2)
  printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /?name=you HTTP/1.1\r\nHost: x\r\n\r\n' |
      nc -q 1 127.0.0.1 8000                   two pipelined requests, two answers, one connection

On the wire the answer is ``HTTP/1.1 200 OK``, ``content-type: text/plain;
charset=utf-8`` (a ``str`` body), ``content-length`` (the whole body is known, so
the connection can carry the next request), ``date`` and ``server``.
"""

from __future__ import annotations

from tinystream import Request, Response


async def app(request: Request) -> Response:
    """Greet whoever the query string names."""
    name = request.query_params.get("name", "world")
    return Response(f"hello, {name}\n")
