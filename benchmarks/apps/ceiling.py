"""The ceiling: a few dozen lines of asyncio.Protocol that do no real HTTP parsing.

It finds the end of a request head, looks at the first line, and writes
pre-formatted bytes - the most pure-Python asyncio can do at all. It serves
/, /big and /sse (the throughput scenarios); everything else is 404.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

from benchmarks.apps.common import CHUNK, EVENT_DATA, HELLO

SMALL = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (
    len(HELLO),
    HELLO,
)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
BIG_CHUNK = b"%x\r\n%b\r\n" % (len(CHUNK), CHUNK)
EVENT = b"data: " + EVENT_DATA.encode() + b"\n\n"
EVENT_CHUNK = b"%x\r\n%b\r\n" % (len(EVENT), EVENT)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class Ceiling(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            url = urlsplit(head.split(b" ", 2)[1].decode())
            query = parse_qs(url.query)
            close = b"connection: close" in head.lower()
            if url.path == "/big":
                count = int(query.get("mb", ["256"])[0]) * 16
                self.task = asyncio.ensure_future(self.stream(STREAM_HEAD, BIG_CHUNK, count, close))
            elif url.path == "/sse":
                count = int(query["n"][0])
                self.task = asyncio.ensure_future(self.stream(SSE_HEAD, EVENT_CHUNK, count, close))
            else:
                self.transport.write(SMALL if url.path == "/" else NOT_FOUND)
                if close:
                    self.transport.close()  # once the buffered response is out

    async def stream(self, head: bytes, chunk: bytes, count: int, close: bool) -> None:
        self.transport.write(head)
        for number in range(count):
            self.transport.write(chunk)
            if not self.writable.is_set():
                await self.writable.wait()
            elif number % 32 == 31:
                await asyncio.sleep(0)
        self.transport.write(b"0\r\n\r\n")
        if close:
            self.transport.close()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        Ceiling, "127.0.0.1", port, backlog=2048
    )
    print(f"ceiling listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
