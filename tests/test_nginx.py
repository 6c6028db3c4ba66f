"""Events through a real nginx reverse proxy, with its default proxy buffering on.

nginx (Debian's nginx-light, installed by .ci/run) talks HTTP/1.0 to its upstream
by default, so our event stream reaches it close-delimited; nginx would hold such
a body in its buffers, but not one sent with ``X-Accel-Buffering: no``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tinystream import EventSourceResponse, Request
from tinystream.testing import ClientConnection, serve_for_test

from . import processes

CONFIG = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
        }}
    }}
}}
"""


TIMEOUT = 30.0  # seconds; nginx starting on a loaded machine included

# /usr/sbin is not on every PATH.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@asynccontextmanager
async def nginx_in_front_of(upstream: int, tmp: Path) -> AsyncIterator[int]:
    assert shutil.which(NGINX), "Debian's nginx-light is installed by .ci/run"
    # We bind and listen ourselves and hand the socket to nginx through its NGINX
    # variable (the mechanism of its binary upgrade). Connections wait in the
    # backlog until nginx accepts them, so there is no "is it up yet?" to poll.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    config = tmp / "nginx.conf"
    config.write_text(CONFIG.format(tmp=tmp, port=port, upstream=upstream))
    try:
        # SIGTERM: nginx's fast shutdown; then its whole group (master and worker) is killed.
        async with processes.running(
            NGINX,
            "-p",
            str(tmp),
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            pass_fds=[listener.fileno()],
            env={"NGINX": f"{listener.fileno()};"},
        ):
            listener.close()  # nginx holds it now
            yield port
    finally:
        listener.close()


async def test_each_event_passes_nginx_before_the_next_exists(tmp_path: Path) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def handler(request: Request) -> EventSourceResponse:
        async def events() -> AsyncIterator[str]:
            while True:
                yield await queue.get()

        return EventSourceResponse(events(), ping=None)

    async with serve_for_test(handler) as client, nginx_in_front_of(client.port, tmp_path) as port:
        conn = await ClientConnection.open("127.0.0.1", port)
        response = await conn.start("GET", "/events", headers={"Accept": "text/event-stream"})
        assert response.status == 200
        events = response.aiter_events()
        for i in range(5):
            queue.put_nowait(f"event {i}")  # the next one is produced only after this arrived
            # Only a guard against hangs: the order is what proves it unbuffered.
            event = await asyncio.wait_for(events.__anext__(), TIMEOUT)
            assert event.data == f"event {i}"
        await conn.close()
