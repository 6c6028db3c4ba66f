"""Every example in ``examples/`` runs and does what its header says.

Each example is served in-process (``serve_for_test``) and driven the way its
docstring tells a reader to drive it with curl or a browser; one test runs an
example through ``python -m tinystream`` and one runs the embedding script, so the
commands the headers print are checked as well.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import importlib
import io
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from examples import chat, download, embed, exports, hello, json_api, llm_relay, sse_clock, upload
from tinystream.cli import load_handler
from tinystream.testing import ClientConnection, serve_for_test

from . import processes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(
    path.stem for path in (ROOT / "examples").glob("*.py") if path.stem not in ("__init__",)
)
#: The examples of the graded set (demo and selftest are the README's demo).
GRADED = [name for name in EXAMPLES if name not in ("demo", "selftest")]
TIMEOUT = 30.0  # seconds; a fresh interpreter is slow on a loaded machine
ENV_PYTHONPATH = {"PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("name", GRADED)
def test_every_example_says_what_it_teaches_and_how_to_run_it(name: str) -> None:
    """The header names what the example teaches, the command that runs it, and what to try."""
    module = importlib.import_module(f"examples.{name}")
    doc = module.__doc__ or ""
    assert "What it teaches:" in doc
    assert "Then try:" in doc
    command = re.search(r"Run it:\s+python -m (tinystream examples\.\w+:\w+|examples\.\w+)", doc)
    assert command, f"examples/{name}.py does not say how to run it"
    # The handler the command names is what the CLI loads.
    assert callable(load_handler(f"examples.{name}:app"))


def test_every_example_has_a_test() -> None:
    tested = {hello, json_api, upload, exports, download, sse_clock, chat, llm_relay, embed}
    assert sorted(m.__name__.removeprefix("examples.") for m in tested) == GRADED


async def test_hello() -> None:
    async with serve_for_test(hello.app) as client:
        response = await client.get("/")
        assert (response.status, response.text) == (200, "hello, world\n")
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert (await client.get("/?name=Ada")).text == "hello, Ada\n"
        head = await client.request("HEAD", "/")
        assert head.body == b"" and head.headers["content-length"] == "13"
        # Two pipelined requests on one connection, answered in order.
        async with client.connection() as conn:
            await conn.send_raw(
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /?name=you HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            raw = b""
            while raw.count(b"hello") < 2:
                raw += await conn.read_raw()
            assert raw.index(b"hello, world") < raw.index(b"hello, you")


async def test_json_api() -> None:
    async with serve_for_test(json_api.make_app()) as client:
        assert len((await client.get("/items")).json()) == 3
        fruit = (await client.get("/items?tag=fruit&limit=1")).json()
        assert [item["name"] for item in fruit] == ["apple"]
        assert (await client.get("/items/2")).json()["name"] == "leek"
        missing = await client.get("/items/99")
        assert (missing.status, missing.text) == (404, "no such item\n")
        assert (await client.get("/items?limit=x")).status == 400
        created = await client.post("/items", body=b'{"name": "kiwi", "tags": ["fruit"]}')
        assert created.status == 201 and created.headers["location"] == "/items/4"
        assert (await client.get("/items/4")).json()["name"] == "kiwi"
        assert (await client.post("/items", body=b"not json")).status == 400
        assert (await client.post("/items", body=b"[1]")).status == 422
        refused = await client.request("DELETE", "/items")
        assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD, POST"


async def test_upload_hashes_the_body_as_it_arrives() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
    async with serve_for_test(upload.app) as client:
        for sent in (body, pieces):  # Content-Length, then chunked
            result = (await client.post("/upload", body=sent)).json()
            assert result["bytes"] == len(body)
            assert result["sha256"] == hashlib.sha256(body).hexdigest()
        # Expect: 100-continue: the body goes only after the server asks for it.
        response = await client.request(
            "PUT", "/upload", body=b"abc", headers={"Expect": "100-continue"}
        )
        assert response.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()


async def test_exports_stream_row_by_row() -> None:
    async with serve_for_test(exports.app) as client:
        ndjson = await client.get("/export.ndjson?rows=5")
        assert ndjson.headers["content-type"] == "application/x-ndjson"
        assert ndjson.headers["transfer-encoding"] == "chunked"
        lines = [json.loads(line) for line in ndjson.text.splitlines()]
        assert [line["id"] for line in lines] == [1, 2, 3, 4, 5]
        exported = await client.get("/export.csv?rows=5")
        assert exported.headers["content-type"] == "text/csv; charset=utf-8"
        assert "attachment" in exported.headers["content-disposition"]
        # The csv module quoted row 3's note; reading it back gives the exact text.
        table = list(csv.reader(io.StringIO(exported.text)))
        assert table[0] == ["id", "name", "note"]
        assert table[3] == ["3", "row 3", 'says "hi", twice']
        assert '"says ""hi"", twice"' in exported.text
        assert len(table) == 6
        assert (await client.get("/export.csv?rows=-1")).status == 400
        # The first rows of a large export arrive while the rest does not exist yet.
        async with client.stream("GET", "/export.csv?rows=10000000") as response:
            async for chunk in response.aiter_bytes():
                assert chunk.startswith(b"id,name,note\r\n")
                break
        events = await client.get("/export?rows=2", headers={"Accept": "text/event-stream"})
        assert events.text == 'data: {"id":1,"name":"row 1","note":"plain"}\n\n' + (
            'data: {"id":2,"name":"row 2","note":"plain"}\n\n'
        )


async def test_download_serves_ranges(tmp_path: Path) -> None:
    size = 3 * 1024 * 1024 + 5
    app = download.make_app(str(tmp_path / "big.bin"), size)
    async with serve_for_test(app) as client:
        whole = await client.get("/file")
        assert whole.status == 200 and len(whole.body) == size
        assert whole.body[:512] == download.BLOCK[:512]
        assert whole.headers["accept-ranges"] == "bytes"
        part = await client.get("/file", headers={"Range": "bytes=1000-1099"})
        assert part.status == 206
        assert part.headers["content-range"] == f"bytes 1000-1099/{size}"
        assert part.body == whole.body[1000:1100]
        assert (await client.get("/file", headers={"Range": f"bytes={size}-"})).status == 416
        etag = whole.headers["etag"]
        assert (await client.get("/file", headers={"If-None-Match": etag})).status == 304
        resumed = await client.get("/file", headers={"Range": "bytes=1000000-", "If-Range": etag})
        assert resumed.status == 206 and resumed.body == whole.body[1000000:]


async def test_sse_clock_resumes_and_stops_its_producer() -> None:
    async with serve_for_test(sse_clock.app) as client:
        async with client.stream("GET", "/clock?every=0.01", headers={"Last-Event-ID": "41"}) as r:
            assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
            events = []
            async for event in r.aiter_events():
                events.append(event)
                if len(events) == 2:
                    break
            assert [(e.event, e.id) for e in events] == [("tick", "42"), ("tick", "43")]
            assert r.decoder is not None and r.decoder.retry == 2000
        # The client closed its connection: the producer was closed with it.
        await client.server.wait_stats(lambda s: s.streams == 0, timeout=5)
        assert (await client.get("/clock?every=0")).status == 400
        assert "EventSource" in (await client.get("/")).text


async def test_chat_replays_what_a_reconnecting_client_missed() -> None:
    async with serve_for_test(chat.make_app(tick=0.01)) as client:
        for text in ("one", "two", "three"):
            assert (await client.post("/chat", body=text.encode())).status == 200
        assert (await client.post("/chat", body=b"  ")).status == 400
        # A browser that saw event 1 comes back: it gets 2 and 3, then live ones.
        async with client.stream("GET", "/chat/events", headers={"Last-Event-ID": "1"}) as r:
            events = r.aiter_events()
            assert [(await anext(events)).data for _ in range(2)] == ["two", "three"]
            await client.post("/chat", body=b"four")
            live = await anext(events)
            assert (live.data, live.id, live.event) == ("four", "4", "message")
        # An id from another history: one resync event, then live.
        async with client.stream("GET", "/chat/events", headers={"Last-Event-ID": "999"}) as r:
            assert (await anext(r.aiter_events())).event == "resync"
        # The ticker publishes while someone listens, and stops when they leave.
        async with client.stream("GET", "/ticker") as r:
            prices = r.aiter_events()
            quotes = [(await anext(prices)).data or "" for _ in range(3)]
            assert all(float(quote) > 0 for quote in quotes)
        await client.server.wait_stats(lambda s: s.streams == 0, timeout=5)
        assert "EventSource" in (await client.get("/")).text


async def test_llm_relay_streams_tokens_and_stops_generating_when_the_client_leaves() -> None:
    relay = llm_relay.Relay(delay=0.01)
    async with serve_for_test(relay.app) as client:
        # A whole answer, token by token, then "done".
        async with client.stream("GET", "/generate?prompt=sky") as r:
            tokens, last = [], None
            async for event in r.aiter_events():
                if event.event == "done":
                    last = event
                    break
                tokens.append(json.loads(event.data or ""))
            assert last is not None
            assert "".join(tokens).strip() == llm_relay.ANSWER
        # An exchange is counted once its producer has been closed.
        await client.server.wait_stats(lambda s: s.requests_served == 1, timeout=5)
        total = len(llm_relay.ANSWER.split())
        assert relay.finished == [(total, total)]
        # The tab closes after two tokens (a FIN): the model's generator stops at once.
        relay.delay = 0.2
        async with client.stream("GET", "/generate?prompt=sky") as r:
            events = r.aiter_events()
            await anext(events)
            await anext(events)
        await client.server.wait_stats(lambda s: s.requests_served == 2, timeout=5)
        assert len(relay.finished) == 2
        produced, wanted = relay.finished[-1]
        assert 2 <= produced <= 3 < wanted
        # A reconnect is told to stop (204); a missing prompt is a 400.
        again = await client.get("/generate?prompt=sky", headers={"Last-Event-ID": "3"})
        assert again.status == 204
        assert (await client.get("/generate")).status == 400
        assert "EventSource" in (await client.get("/")).text


async def test_embed_handler() -> None:
    async with serve_for_test(embed.app) as client:
        assert (await client.get("/")).text.startswith("up for ")


async def _listening_port(process: asyncio.subprocess.Process) -> int:
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), TIMEOUT)
        assert line, "the program exited before listening"
        match = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))


async def _get(port: int, path: str) -> bytes:
    conn = await ClientConnection.open("127.0.0.1", port)
    try:
        return (await conn.request("GET", path)).body
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("argv", "path", "expected"),
    [
        (("-m", "tinystream", "examples.hello:app", "--port", "0"), "/?name=cli", b"hello, cli\n"),
        (("-m", "examples.embed", "0"), "/", b"up for "),
    ],
    ids=["python -m tinystream examples.hello:app", "python -m examples.embed"],
)
async def test_the_commands_in_the_headers_run(
    argv: tuple[str, ...], path: str, expected: bytes
) -> None:
    """The documented commands serve, and stop cleanly on SIGTERM."""
    async with processes.running(
        sys.executable,
        *argv,
        cwd=ROOT,
        env={**os.environ, **ENV_PYTHONPATH},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    ) as process:
        port = await _listening_port(process)
        assert (await _get(port, path)).startswith(expected)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
        if argv[1] == "examples.embed":
            assert process.stdout is not None
            assert b"the script goes on" in await process.stdout.read()
