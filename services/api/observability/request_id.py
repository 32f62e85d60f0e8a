"""X-Request-ID: taken from nginx (or the client) or made here, echoed back and put on every log line."""

from __future__ import annotations

import uuid

import falcon

from services.common import logs


class RequestIdMiddleware:
    """Sets the log context's request id for the thread serving the request.

    It is not reset at the end: a stream's body, and gunicorn's access line, are written after Falcon's
    middleware has finished, in the same thread; the next request on that thread sets its own.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = (req.get_header("X-Request-ID") or "")[:128] or uuid.uuid4().hex
        req.context.request_id = rid
        resp.set_header("X-Request-ID", rid)
        logs.request_id.set(rid)
