"""Test helpers: a transport that records, and a client-side parser for what it recorded."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import h11

from tinystream.config import Config
from tinystream.server import HTTPConnection, ServerContext

SIMPLE_GET = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
POST_CL = b"POST /echo HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello"
POST_CHUNKED = (
    b"POST /echo HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
)


class FakeTransport(asyncio.Transport):
    """Records writes and flow-control calls; closing calls connection_lost soon after."""

    def __init__(self, protocol: HTTPConnection, peer: tuple[str, int] = ("127.0.0.1", 5555)):
        super().__init__()
        self.protocol = protocol
        self.peer = peer
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.high = 64 * 1024
        self.buffered = 0  # pretend-unsent bytes, for flow-control tests

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high if high is not None else self.high

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


def make_connection(handler: Any, **options: Any) -> tuple[HTTPConnection, FakeTransport]:
    """A protocol on a fake transport (call inside a running loop)."""
    ctx = ServerContext(handler, Config(**options))
    protocol = HTTPConnection(ctx)
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)
    return protocol, transport


def parse_responses(data: bytes, methods: list[bytes] | None = None) -> list[dict[str, Any]]:
    """Parse every response in ``data`` with an h11 client.

    ``methods`` gives the request method behind each response (HEAD responses
    have no body). Each dict holds status, headers, body and whether it ended.
    """
    methods = list(methods or [])
    client = h11.Connection(h11.CLIENT)
    responses: list[dict[str, Any]] = []
    client.receive_data(data)
    client.receive_data(b"")
    while True:
        if client.our_state is h11.IDLE or (
            client.our_state is h11.DONE and client.their_state is h11.DONE
        ):
            if client.our_state is h11.DONE:
                try:
                    client.start_next_cycle()
                except h11.LocalProtocolError:
                    break
            method = methods.pop(0) if methods else b"GET"
            client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:
            break  # EOF mid-message: "complete" stays False unless EndOfMessage came
        if isinstance(event, h11.Response):
            responses.append(
                {
                    "status": event.status_code,
                    "headers": dict(event.headers),
                    "body": b"",
                    "raw_headers": list(event.headers),
                    "complete": False,
                }
            )
        elif isinstance(event, h11.Data):
            responses[-1]["body"] += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            responses[-1]["complete"] = True
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            break
    return responses


async def settle(protocol: HTTPConnection, rounds: int = 50) -> None:
    """Run the event loop until the protocol's exchanges have all finished.

    Awaits the tasks themselves (no timed sleeps); ``sleep(0)`` only lets callbacks
    already scheduled (``connection_lost`` from a fake close) run.
    """
    tasks = protocol.ctx.tasks
    for _ in range(rounds):
        if tasks:
            done, _pending = await asyncio.wait(list(tasks), timeout=5)
            assert done, "exchange did not finish within 5s"
        await asyncio.sleep(0)
        if not tasks:
            return
    raise AssertionError("exchanges kept starting")


async def wait(event: asyncio.Event, timeout: float = 5.0) -> None:
    """Wait for ``event``, failing the test after ``timeout`` seconds instead of hanging."""
    await asyncio.wait_for(event.wait(), timeout)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key
