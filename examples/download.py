"""A large file download: sendfile(2), validators, conditional requests and ``Range``.

What it teaches: :class:`~tinystream.FileResponse` never reads a file into memory.
On plain TCP the body goes from the page cache to the socket with ``sendfile(2)``,
in 256 KiB slices each bounded by the write-stall timeout; over TLS it is read in
64 KiB pieces in a worker thread. It sends ``Content-Length``, ``Last-Modified``,
a strong ``ETag`` and ``Accept-Ranges: bytes``, and answers:

- ``Range: bytes=first-last`` with ``206 Partial Content`` and ``Content-Range``
  (RFC 9110 §14): how ``curl -C -`` and browsers resume a broken download;
- a range past the end with ``416`` and ``Content-Range: bytes */size``;
- ``If-None-Match`` / ``If-Modified-Since`` with ``304 Not Modified``;
- ``If-Range``: the range only if the file is still the one the client has.

The file is made on first use (64 MiB of a repeating pattern, in the temporary
directory); ``DOWNLOAD_FILE=/some/path`` serves another one.

Run it:   python -m tinystream examples.download:app
Then try:
  curl -s http://127.0.0.1:8000/file | sha256sum             the whole file
  curl -s -r 0-99 -D - -o /dev/null http://127.0.0.1:8000/file
                                    206 and Content-Range: bytes 0-99/67108864
  curl -s -r 99999999999- -D - http://127.0.0.1:8000/file    416
  curl -s -r 0-999999 -o part http://127.0.0.1:8000/file
  curl -s -C - -o part http://127.0.0.1:8000/file            resume where the first one stopped
  curl -sI http://127.0.0.1:8000/file                        note the ETag, then:
  curl -s -D - -H 'If-None-Match: "<that etag>"' http://127.0.0.1:8000/file
                                    304: the client's copy is current
  curl -s --limit-rate 100k -o /dev/null http://127.0.0.1:8000/file
                                    a slow client: the server holds no more than the socket does
"""

from __future__ import annotations

import asyncio
import os
import tempfile

from tinystream import FileResponse, Request, Router

SIZE = 64 * 1024 * 1024  # bytes
BLOCK = bytes(range(256)) * 4096  # 1 MiB of a pattern a reader can check
DOWNLOAD_FILE_GIVEN = os.environ.get("DOWNLOAD_FILE")


def make_file(path: str, size: int = SIZE) -> str:
    """Write ``size`` bytes of the pattern to ``path`` unless it is there already."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return path
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "wb") as file:
        left = size
        while left:
            piece = BLOCK[: min(left, len(BLOCK))]
            file.write(piece)
            left -= len(piece)
    os.replace(partial, path)  # atomic: a concurrent request never sees half a file
    return path


def make_app(path: str | None = None, size: int = SIZE) -> Router:
    """Serve ``path`` (made on first use) at ``/file``."""
    target = (
        path
        or DOWNLOAD_FILE_GIVEN
        or os.path.join(tempfile.gettempdir(), "tinystream-download-example.bin")
    )
    app = Router()

    @app.get("/file")
    async def download(request: Request) -> FileResponse:
        if not DOWNLOAD_FILE_GIVEN:
            # Looking at and writing the disk blocks: a worker thread, never the loop.
            await asyncio.to_thread(make_file, target, size)
        return FileResponse(target, media_type="application/octet-stream", filename="big.bin")

    return app


app = make_app()
