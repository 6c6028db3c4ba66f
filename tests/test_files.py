"""FileResponse and StaticFiles: validators, 304/412, ranges, sendfile, traversal refusals."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tinystream import FileResponse, Request, Router, StaticFiles
from tinystream.files import UNSATISFIABLE, parse_range
from tinystream.testing import serve_for_test

from .test_server import small_buffer_listener

DATA = bytes(range(256)) * 4096  # 1 MiB: several sendfile slices


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


def file_handler(path: Path, **kwargs: object) -> object:
    async def handler(request: Request) -> FileResponse:
        return FileResponse(path, **kwargs)  # type: ignore[arg-type]

    return handler


async def test_whole_file_with_validators(data_file: Path) -> None:
    async with serve_for_test(file_handler(data_file)) as client:
        response = await client.get("/")
        assert response.status == 200 and response.body == DATA
        assert response.headers["content-length"] == str(len(DATA))
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["etag"].startswith('"') and "last-modified" in response.headers
        assert response.headers["content-type"] == "application/octet-stream"
        head = await client.request("HEAD", "/")
        assert head.body == b"" and head.headers["content-length"] == str(len(DATA))


async def test_conditional_requests(data_file: Path) -> None:
    async with serve_for_test(file_handler(data_file)) as client:
        first = await client.get("/")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        for headers in (
            {"If-None-Match": etag},
            {"If-None-Match": f'"other", W/{etag}'},
            {"If-None-Match": "*"},
            {"If-Modified-Since": modified},
        ):
            response = await client.get("/", headers=headers)
            assert response.status == 304 and response.body == b"", headers
            assert response.headers["etag"] == etag
        assert (await client.get("/", headers={"If-None-Match": '"other"'})).status == 200
        past = "Mon, 01 Jan 2001 00:00:00 GMT"
        assert (await client.get("/", headers={"If-Modified-Since": past})).status == 200
        assert (await client.get("/", headers={"If-Modified-Since": "garbage"})).status == 200
        assert (await client.get("/", headers={"If-Match": '"other"'})).status == 412
        assert (await client.get("/", headers={"If-Match": etag})).status == 200
        assert (await client.get("/", headers={"If-Unmodified-Since": past})).status == 412


async def test_single_ranges(data_file: Path) -> None:
    size = len(DATA)
    async with serve_for_test(file_handler(data_file)) as client:
        etag = (await client.get("/")).headers["etag"]
        for value, start, end in (
            ("bytes=0-99", 0, 99),
            ("bytes=1000-", 1000, size - 1),
            ("bytes=-100", size - 100, size - 1),
            ("bytes=500000-999999999", 500000, size - 1),
        ):
            response = await client.get("/", headers={"Range": value})
            assert response.status == 206, value
            assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
            assert response.body == DATA[start : end + 1]
        unsatisfiable = await client.get("/", headers={"Range": f"bytes={size}-"})
        assert unsatisfiable.status == 416
        assert unsatisfiable.headers["content-range"] == f"bytes */{size}"
        for ignored in ("bytes=0-1,5-6", "bytes=9-2", "items=0-5", "bytes=abc"):
            response = await client.get("/", headers={"Range": ignored})
            assert response.status == 200 and response.body == DATA, ignored
        matching = await client.get("/", headers={"Range": "bytes=0-9", "If-Range": etag})
        assert matching.status == 206 and matching.body == DATA[:10]
        stale = await client.get("/", headers={"Range": "bytes=0-9", "If-Range": '"old"'})
        assert stale.status == 200 and stale.body == DATA


def test_parse_range() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=-0", 10) == UNSATISFIABLE
    assert parse_range("bytes=-20", 10) == (0, 9)
    assert parse_range("bytes=0-", 0) == UNSATISFIABLE
    assert parse_range(" bytes = 2 - 4 ", 10) == (2, 4)
    assert parse_range("bytes=-", 10) is None


async def test_missing_file_is_404_and_download_names(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    async with serve_for_test(file_handler(tmp_path / "missing")) as client:
        assert (await client.get("/")).status == 404
    async with serve_for_test(file_handler(tmp_path)) as client:
        assert (await client.get("/")).status == 404  # a directory is not a file
    async with serve_for_test(
        file_handler(tmp_path / "report.pdf", filename="Über €.pdf")
    ) as client:
        response = await client.get("/")
        assert response.headers["content-type"] == "application/pdf"
        disposition = response.headers["content-disposition"]
        assert (
            disposition
            == "attachment; filename=\"?ber ?.pdf\"; filename*=UTF-8''%C3%9Cber%20%E2%82%AC.pdf"
        )


async def test_a_client_that_stops_reading_a_download_is_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tinystream.access")
    big = tmp_path / "big.bin"
    with big.open("wb") as file:
        file.truncate(64 * 1024 * 1024)  # sparse: instant to make
    listener = small_buffer_listener()
    async with serve_for_test(file_handler(big), sock=listener, write_stall_timeout=0.5) as client:
        async with client.stream("GET", "/", recv_buffer=4096) as response:
            assert response.status == 200
            await client.server.wait_stats(lambda s: s.connections == 0, 5)
    assert any(r.getMessage().endswith(" stalled") for r in caplog.records)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "public"
    (root / "docs").mkdir(parents=True)
    (root / "index.html").write_text("home")
    (root / "docs" / "index.html").write_text("docs home")
    (root / "style.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("do not serve")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    os.symlink(root / "style.css", root / "alias.css")
    return root


async def test_static_files_serve_and_refuse_traversal(site: Path) -> None:
    router = Router()
    router.add("/static/{path:path}", StaticFiles(site))
    async with serve_for_test(router) as client:
        assert (await client.get("/static/style.css")).body == b"body{}"
        assert (await client.get("/static/docs/")).body == b"docs home"
        assert (await client.get("/static/alias.css")).body == b"body{}"  # a link inside the root
        for attack in (
            "/static/../secret.txt",
            "/static/%2e%2e/secret.txt",
            "/static/%2E%2E%2Fsecret.txt",
            "/static/docs/../../secret.txt",
            "/static//etc/passwd",
            "/static/escape.txt",  # a symlink leading out of the root
            "/static/nope.txt",
            "/static/a%00b",
        ):
            response = await client.get(attack)
            assert response.status == 404, attack
            assert b"do not serve" not in response.body


async def test_static_files_mounted_as_the_readme_shows_serve_the_index(site: Path) -> None:
    """``/static/`` is the directory itself: its index.html (it was a 404). A file
    named with a trailing slash is a 404 (it was a 200); a directory named
    without one is redirected to it, so the index's relative links work."""
    router = Router()
    router.add("/static/{path:path}", StaticFiles(site))
    async with serve_for_test(router) as client:
        assert (await client.get("/static/")).body == b"home"
        assert (await client.get("/static/index.html/")).status == 404
        assert (await client.get("/static/style.css/")).status == 404
        moved = await client.get("/static/docs?x=1")
        assert moved.status == 301 and moved.headers["location"] == "/static/docs/?x=1"
        assert (await client.get("/static")).status == 404  # the route needs its slash
    no_index = Router()
    no_index.add("/files/{path:path}", StaticFiles(site, index=None))
    async with serve_for_test(no_index) as client:
        assert (await client.get("/files/")).status == 404
        assert (await client.get("/files/docs")).status == 404


async def test_static_files_as_the_whole_handler(site: Path) -> None:
    async with serve_for_test(StaticFiles(site)) as client:
        assert (await client.get("/")).body == b"home"
        assert (await client.post("/style.css")).status == 405
    with pytest.raises(ValueError, match="not a directory"):
        StaticFiles(site / "style.css")


async def test_file_is_closed_when_the_client_leaves(data_file: Path) -> None:
    opened: list[FileResponse] = []

    async def handler(request: Request) -> FileResponse:
        response = FileResponse(data_file)
        opened.append(response)
        return response

    listener = small_buffer_listener()
    async with serve_for_test(handler, sock=listener) as client:
        async with client.stream("GET", "/", recv_buffer=4096) as response:
            async for _ in response.aiter_bytes(4096):
                break
            response.abort()
        await client.server.wait_stats(lambda s: s.connections == 0, 5)
    assert opened[0].file is not None and opened[0].file.closed
