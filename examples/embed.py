"""Embedding a server in a plain script: ``tinystream.run``, no CLI, no framework.

What it teaches: :func:`tinystream.run` serves a handler from any Python program
and blocks until Ctrl-C or SIGTERM, then stops gracefully: it stops accepting,
lets in-flight responses finish (``graceful_timeout``), ends open streams, and
returns, so code after it runs. Every option of the CLI is a keyword argument
here (``keep_alive_timeout=``, ``max_body_size=``, ``write_stall_timeout=``...).
From inside an async program, use ``await tinystream.serve(handler, ...)`` (runs
until cancelled) or ``server = await tinystream.start_server(handler, port=0)``
(returns at once with ``server.url``; ``await server.close()``).

Run it:   python -m examples.embed            (or: python examples/embed.py 8001)
          python -m tinystream examples.embed:app    works too: the handler is plain
Then try:
  curl http://127.0.0.1:8000/             the uptime
  kill -TERM <pid>, or Ctrl-C             "stopped", then the script's last line
"""

from __future__ import annotations

import sys
import time

import tinystream
from tinystream import Request, Response

STARTED = time.monotonic()


async def app(request: Request) -> Response:
    """Answer every request with the server's uptime."""
    return Response(f"up for {time.monotonic() - STARTED:.1f} s\n")


def main(argv: list[str]) -> None:
    """Serve on the port given as the first argument (default 8000; 0 picks a free one)."""
    port = int(argv[0]) if argv else 8000
    tinystream.run(app, host="127.0.0.1", port=port, graceful_timeout=2, access_log=False)
    print("the server has stopped; the script goes on", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
