"""tinystream: a small, fast HTTP/1.1 server for streaming responses and Server-Sent Events.

The public names are listed in ``__all__``; everything else is an implementation detail.
"""

from __future__ import annotations

from .config import Config
from .datastructures import Headers, QueryParams
from .errors import ClientDisconnected, HTTPError
from .files import FileResponse, StaticFiles
from .request import Request
from .responses import JSONResponse, Response, StreamingResponse
from .routing import Router
from .serving import Server, ServerStats, run, serve, start_server
from .sse import EventStreamDecoder, ServerSentEvent
from .streams import EventSourceResponse, NDJSONResponse, negotiate_stream

__all__ = [
    "ClientDisconnected",
    "Config",
    "EventSourceResponse",
    "EventStreamDecoder",
    "FileResponse",
    "HTTPError",
    "Headers",
    "JSONResponse",
    "NDJSONResponse",
    "QueryParams",
    "Request",
    "Response",
    "Router",
    "Server",
    "ServerSentEvent",
    "ServerStats",
    "StaticFiles",
    "StreamingResponse",
    "negotiate_stream",
    "run",
    "serve",
    "start_server",
]

__version__ = "0.1.0"
