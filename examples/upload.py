"""A streaming upload: the body is hashed as it arrives, never held whole in memory.

What it teaches: ``async for chunk in request.stream()`` hands the handler each
piece of the request body as h11 parses it - ``Content-Length`` or chunked
(RFC 9112 §7.1), the server undoes the framing. Reading is flow-controlled:
while the handler does not read, the server stops reading the socket once 64 KiB
are waiting (``read_high_water``), so a slow handler slows the client down
instead of filling memory. A client that sends ``Expect: 100-continue`` gets its
``100 Continue`` only when the handler first asks for the body (RFC 9110
§10.1.1). Bodies above ``max_body_size`` (16 MiB by default; here 1 GiB) are
refused with 413.

Run it:   python -m tinystream examples.upload:app --max-body-size 1073741824
Then try:
  head -c 100000000 /dev/urandom > /tmp/big && sha256sum /tmp/big
  curl -T /tmp/big http://127.0.0.1:8000/upload          the same digest, in one pass
  curl -T - http://127.0.0.1:8000/upload < /tmp/big      a chunked upload (no length known)
  curl -v -T /tmp/big http://127.0.0.1:8000/upload       see "HTTP/1.1 100 Continue" first
"""

from __future__ import annotations

import hashlib

from tinystream import JSONResponse, Request, Router

app = Router()


@app.route("/upload", methods=("POST", "PUT"))
async def upload(request: Request) -> JSONResponse:
    """Hash the body piece by piece; answer with its size and SHA-256."""
    digest = hashlib.sha256()
    size = chunks = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
        chunks += 1
    return JSONResponse({"bytes": size, "sha256": digest.hexdigest(), "pieces": chunks})
