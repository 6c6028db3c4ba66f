"""Exports generated row by row: NDJSON and CSV that start arriving before the last row exists.

What it teaches: a :class:`~tinystream.StreamingResponse` body is any iterable; each
item goes out as one chunk (RFC 9112 §7.1) as soon as it is produced, so an export
of a million rows needs the memory of one row, and the first rows reach the client
at once. The rows here come from a plain generator standing in for a database
cursor: a *sync* iterator, which tinystream runs in a worker thread so a blocking
``next()`` stalls no other client. When the client is slower than the generator,
the server stops pulling rows (backpressure); when the client leaves, the
generator is closed - its ``finally`` runs.

CSV quoting is the ``csv`` module's job (RFC 4180: quotes doubled, fields with a
comma, a quote or a line break quoted), never an f-string: ``_CSVLine`` is a
file-like object whose ``write`` returns the line instead of storing it, so
``csv.writer(...).writerow(row)`` gives back each encoded row.

Run it:   python -m tinystream examples.exports:app
Then try:
  curl -N 'http://127.0.0.1:8000/export.ndjson?rows=5'      one JSON document per line
  curl -N 'http://127.0.0.1:8000/export.csv?rows=5'         CSV, quoting done right (row 3)
  curl -s 'http://127.0.0.1:8000/export.csv?rows=1000000' | wc -l    a million rows, streamed
  curl -N -H 'Accept: text/event-stream' 'http://127.0.0.1:8000/export?rows=3'
                                                            the same rows as SSE (negotiate_stream)
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from tinystream import (
    HTTPError,
    NDJSONResponse,
    Request,
    Router,
    StreamingResponse,
    negotiate_stream,
)

MAX_ROWS = 10_000_000
COLUMNS = ("id", "name", "note")


def rows(count: int) -> Iterator[dict[str, Any]]:
    """Stands in for a database cursor: one row at a time, blocking if it likes."""
    for number in range(1, count + 1):
        note = 'says "hi", twice' if number % 3 == 0 else "plain"
        yield {"id": number, "name": f"row {number}", "note": note}


class _CSVLine:
    """A file for ``csv.writer`` that hands each written line back instead of storing it."""

    def write(self, line: str) -> str:
        return line


def csv_lines(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The header line, then one CSV line per record, each encoded by the csv module."""
    writer = csv.writer(_CSVLine())
    yield writer.writerow(COLUMNS)
    for record in records:
        yield writer.writerow([record[column] for column in COLUMNS])


def _count(request: Request) -> int:
    try:
        count = int(request.query_params.get("rows", "100"))
    except ValueError:
        raise HTTPError(400, "rows must be a number") from None
    if not 0 <= count <= MAX_ROWS:
        raise HTTPError(400, f"rows must be from 0 to {MAX_ROWS}")
    return count


app = Router()


@app.get("/export.ndjson")
async def export_ndjson(request: Request) -> NDJSONResponse:
    return NDJSONResponse(rows(_count(request)))


@app.get("/export.csv")
async def export_csv(request: Request) -> StreamingResponse:
    return StreamingResponse(
        csv_lines(rows(_count(request))),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="export.csv"'},
    )


@app.get("/export")
async def export(request: Request) -> StreamingResponse:
    # SSE if the Accept fields prefer it (RFC 9110 §12.5.1), NDJSON otherwise.
    return negotiate_stream(request, rows(_count(request)))
