"""Files from disk: FileResponse (validators, conditional and range requests) and StaticFiles.

Everything here that touches the disk is blocking by nature and runs in a worker
thread: :meth:`FileResponse.prepare` (stat, open, decide 200/206/304/412/416) and
:meth:`StaticFiles.resolve`. The body then goes out with ``sendfile(2)`` when the
transport is a plain socket, or in 64 KiB reads otherwise (TLS); the response
writer chooses (:mod:`tinystream._writer`).
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from typing import IO, Any
from urllib.parse import quote

from ._threads import shared_pool
from .datastructures import Headers
from .errors import HTTPError
from .responses import HeadersArg, Response, StreamingResponse

__all__ = ["FileResponse", "StaticFiles"]

#: Pieces read from disk when sendfile cannot be used.
FILE_CHUNK = 64 * 1024  # bytes


class FileResponse(StreamingResponse):
    """A file streamed from disk, never read whole into memory.

    Sends ``Content-Length``, ``Last-Modified``, a strong ``ETag`` (size and
    modification time) and ``Accept-Ranges: bytes``. Answers ``If-None-Match`` /
    ``If-Modified-Since`` with 304, ``If-Match`` / ``If-Unmodified-Since`` with
    412, and a single ``Range`` with 206 (416 when unsatisfiable; several ranges
    get the whole file, which RFC 9110 §14.2 allows). ``If-Range`` is honoured.

    Args:
        path: the file. Missing or not a regular file: 404 when sent.
        media_type: ``Content-Type``; guessed from the name when omitted.
        filename: offer the file as a download (``Content-Disposition:
            attachment``, with an RFC 8187 ``filename*`` for non-ASCII names).
    """

    __slots__ = ("count", "file", "offset", "path")

    def __init__(
        self,
        path: str | os.PathLike[str],
        media_type: str | None = None,
        filename: str | None = None,
        status: int = 200,
        headers: HeadersArg = None,
    ) -> None:
        self.path = os.fspath(path)
        if media_type is None:
            guessed = mimetypes.guess_type(filename or self.path)[0]
            media_type = guessed or "application/octet-stream"
        super().__init__((), status, headers, media_type)
        if filename is not None:
            self.headers.append((b"content-disposition", content_disposition(filename)))
        self.file: IO[bytes] | None = None
        self.offset = 0
        self.count = 0

    def prepare(self, method: str, request_headers: Headers) -> Response | None:
        """Open the file and decide the answer (blocking: call it in a worker thread).

        Returns a response to send instead (304, 412, 416), or None to send this
        one, now set up with its status, validators, length and body.

        Raises:
            HTTPError: 404 when the path is missing or not a regular file.
        """
        try:
            file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise HTTPError(404) from None
        except PermissionError:
            raise HTTPError(403) from None
        try:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise HTTPError(404)
            size = info.st_size
            etag = f'"{size:x}-{info.st_mtime_ns:x}"'
            modified = formatdate(info.st_mtime, usegmt=True)
            validators = [(b"etag", etag.encode()), (b"last-modified", modified.encode())]
            refusal = _preconditions(method, request_headers, etag, int(info.st_mtime))
            if refusal is not None:
                file.close()
                return Response(status=refusal, headers=_decoded(validators))
            self.headers += [*validators, (b"accept-ranges", b"bytes")]
            self.offset, self.count = 0, size
            wanted = request_headers.get("range")
            if wanted is not None and method == "GET" and self.status == 200:
                if_range = request_headers.get("if-range")
                if if_range is None or if_range.strip() in (etag, modified):
                    span = parse_range(wanted, size)
                    if span == UNSATISFIABLE:
                        file.close()
                        return Response(status=416, headers={"Content-Range": f"bytes */{size}"})
                    if isinstance(span, tuple):
                        start, end = span
                        self.status = 206
                        self.headers.append(
                            (b"content-range", f"bytes {start}-{end}/{size}".encode())
                        )
                        self.offset, self.count = start, end - start + 1
        except BaseException:
            file.close()
            raise
        self.file = file
        self.content_length = self.count
        self.content = _read_span(file, self.offset, self.count)
        return None

    def close(self) -> None:
        """Close the file (safe to call more than once)."""
        if self.file is not None:
            self.file.close()


def _decoded(fields: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode(), value.decode()) for name, value in fields]


def _read_span(file: IO[bytes], offset: int, count: int) -> Iterator[bytes]:
    # A sync generator: the server runs it in a worker thread (disk reads never
    # block the event loop) and closes it, closing the file, when it is done.
    try:
        file.seek(offset)
        while count > 0:
            chunk = file.read(min(FILE_CHUNK, count))
            if not chunk:
                raise RuntimeError("file shrank while it was being sent")
            count -= len(chunk)
            yield chunk
    finally:
        file.close()


def _etag_list(value: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in value.split(",")]


def _http_date(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # an invalid date is ignored (RFC 9110 §13.1.3)


def _preconditions(method: str, headers: Headers, etag: str, mtime: int) -> int | None:
    """RFC 9110 §13.2.2, in its order: 412 or 304 when a condition says so."""
    if_match = headers.get("if-match")
    if if_match is not None:
        # Strong comparison: a weak tag never matches If-Match.
        tags = [tag.strip() for tag in if_match.split(",")]
        if "*" not in tags and etag not in tags:
            return 412
    else:
        since = _http_date(headers.get("if-unmodified-since"))
        if since is not None and mtime > since:
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = _etag_list(if_none_match)
        if "*" in tags or etag in tags:
            return 304 if method in ("GET", "HEAD") else 412
    elif method in ("GET", "HEAD"):
        since = _http_date(headers.get("if-modified-since"))
        if since is not None and mtime <= since:
            return 304
    return None


_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


UNSATISFIABLE = "unsatisfiable"


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """One byte range of a ``Range`` field, as ``(first, last)`` inclusive.

    Returns :data:`UNSATISFIABLE` for a range that starts past the end (416), and
    None for anything to ignore: several ranges, other units, malformed syntax
    (RFC 9110 §14.2: a server may ignore an invalid or unsupported Range).
    """
    match = _RANGE.fullmatch(value)
    if not match:
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        if not last:
            return None
        suffix = int(last)  # the last N bytes
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: the whole field is ignored
    if start >= size:
        return UNSATISFIABLE
    return start, min(end, size - 1)


def content_disposition(filename: str) -> bytes:
    """``attachment`` with a plain quoted name, plus ``filename*`` for non-ASCII names.

    RFC 6266 §4.3: old clients read ``filename``; everyone else prefers
    ``filename*``, UTF-8 and percent-encoded as RFC 8187 says.
    """
    ascii_name = filename.encode("ascii", "replace").decode("ascii")
    ascii_name = re.sub(r'[\x00-\x1f\x7f"\\]', "_", ascii_name)
    value = f'attachment; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value.encode("ascii")


class _DirectoryWithoutSlash(Exception):
    """``resolve()`` found a directory named without its trailing slash."""


class StaticFiles:
    """A handler serving the files under one directory.

    Mount it on a route with a ``{path:path}`` parameter
    (``router.add("/static/{path:path}", StaticFiles("public"))``) or use it as the
    whole handler (the request path is then the file path). Anything that would
    leave the directory - ``..`` segments (also percent-encoded: the path is
    decoded first), absolute paths, NUL bytes, symlinks pointing outside - is a
    404, as is a missing file. A directory serves its ``index`` file
    (``/static/`` gives ``index.html``); named without its trailing slash, it is
    redirected (301) to the URL with one, so the index's relative links work.
    """

    def __init__(self, directory: str | os.PathLike[str], *, index: str | None = "index.html"):
        self.root = os.path.realpath(os.fspath(directory))
        if not os.path.isdir(self.root):
            raise ValueError(f"StaticFiles directory {os.fspath(directory)!r} is not a directory")
        self.index = index

    def resolve(self, relative: str) -> str:
        """The real path of the file to serve (blocking: it looks at the disk).

        Raises:
            HTTPError: 404 for anything outside the directory, or not a file
                (``"file.html/"`` included).
            _DirectoryWithoutSlash: a directory without its trailing slash (the
                caller redirects to the URL with it).
        """
        if "\0" in relative or "\\" in relative or os.path.isabs(relative):
            raise HTTPError(404)
        if any(part == ".." for part in relative.split("/")):
            raise HTTPError(404)
        candidate = os.path.realpath(os.path.join(self.root, relative))
        if os.path.commonpath([candidate, self.root]) != self.root:
            raise HTTPError(404)  # a symlink that leads out of the directory
        if os.path.isdir(candidate):
            if self.index is None:
                raise HTTPError(404)
            if relative and not relative.endswith("/"):
                # The index's relative links resolve against the URL: give it its
                # trailing slash first (as nginx, Apache and Go's FileServer do).
                raise _DirectoryWithoutSlash(relative)
            candidate = os.path.join(candidate, self.index)
        elif relative.endswith("/"):
            raise HTTPError(404)  # "file.html/" names a directory that is not there
        if not os.path.isfile(candidate):
            raise HTTPError(404)
        return candidate

    async def __call__(self, request: Any) -> Response | FileResponse:
        relative = request.path_params.get("path", request.path.lstrip("/"))
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(405, headers={"Allow": "GET, HEAD"})
        try:
            return FileResponse(await shared_pool().run(self.resolve, relative))
        except _DirectoryWithoutSlash:
            location = quote(request.path + "/") + (f"?{request.query}" if request.query else "")
            return Response(status=301, headers={"Location": location})
