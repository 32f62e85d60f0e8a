"""Reads a request body as JSON bytes, with the size limit and content-type check done first."""

from __future__ import annotations

import falcon

from services.common.errors import PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = ("application/json", "application/*+json")


def read_json_body(req: falcon.Request, limit: int) -> bytes:
    """Raw JSON bytes (pydantic parses them); 415 for a non-JSON type, 413 past `limit` bytes."""
    ctype = (req.content_type or "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {ctype!r}.")
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLarge(f"The request body is {req.content_length} bytes; the limit is {limit}.")
    raw = req.bounded_stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")
    return raw
