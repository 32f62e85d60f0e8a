"""Reads a request body as JSON bytes, with the size limit and content-type check done first.

A chunked body (Transfer-Encoding: chunked, no Content-Length) is read as far as the limit allows: nginx
buffers it into one with a length, but a client that reaches a replica directly sends it as it is, and
Falcon's bounded stream, which trusts Content-Length alone, would read it as empty. gunicorn de-chunks
`wsgi.input` and says so (`wsgi.input_terminated`); under a server that does not, it is refused with 411.
"""

from __future__ import annotations

import falcon

from services.common.errors import LengthRequired, PayloadTooLarge, UnsupportedMediaType, clip

JSON_TYPES = ("application/json", "application/*+json")


def read_json_body(req: falcon.Request, limit: int) -> bytes:
    """Raw JSON bytes (pydantic parses them); 415 for a non-JSON type, 413 past `limit` bytes, 411 for a
    chunked body the server cannot read."""
    ctype = (req.content_type or "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {clip(ctype)!r}.")
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLarge(f"The request body is {req.content_length} bytes; the limit is {limit}.")
    if req.content_length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        if not req.env.get("wsgi.input_terminated"):
            raise LengthRequired("A chunked request body cannot be read here; send it with a Content-Length.")
        raw = req.stream.read(limit + 1)  # the server ends the stream at the last chunk
    else:
        raw = req.bounded_stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")
    return raw
