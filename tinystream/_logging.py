"""Log formats for the command line and :func:`tinystream.run`: ``text`` and ``json``.

Every line carries its time in ISO 8601 with milliseconds and the UTC offset
(``2025-01-31T14:03:07.123+01:00``), so lines from several processes, or from a
log shipper, sort and correlate. A worker process of ``--workers N`` adds its
number (``[worker 2]`` / ``"worker": 2``) to every line it writes.

``json`` writes one object per line: ``time``, ``level``, ``logger``, ``message``,
``exception`` (a formatted traceback, when there is one) and, on access lines,
the fields :func:`tinystream._context.response_ended` passes as ``extra``:
``method``, ``target``, ``status``, ``bytes``, ``duration`` (seconds),
``outcome`` and ``client``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any

__all__ = ["ACCESS_FIELDS", "FORMATS", "JSONFormatter", "TextFormatter", "configure", "set_worker"]

FORMATS = ("text", "json")
#: The structured fields of an access-log record (set with ``extra=``).
ACCESS_FIELDS = ("method", "target", "status", "bytes", "duration", "outcome", "client")

# The worker number of this process, or None in a single-process server. A module
# global, not a handler attribute: a worker sets it once, after the fork.
_worker: int | None = None


def set_worker(number: int | None) -> None:
    """Tag every line this process logs from now on with ``number``."""
    global _worker
    _worker = number


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created).astimezone()
    return moment.isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``TIME LEVEL [worker N] message``, then the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        worker = "" if _worker is None else f"[worker {_worker}] "
        line = f"{_timestamp(record)} {record.levelname:<7} {worker}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line (newlines inside values are escaped by json)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if _worker is not None:
            entry["worker"] = _worker
        for name in ACCESS_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str | int = "INFO", log_format: str = "text") -> None:
    """Send the root logger's records to stderr in ``log_format``, replacing its handlers.

    Raises:
        ValueError: an unknown format.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
