"""X-Request-ID: taken from nginx (or the client) or made here, echoed back and put in every log line."""

from __future__ import annotations

import logging
import threading
import uuid

import falcon


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to log records; gthread serves one request per thread at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(self.local, "id", "-")
        return True


class RequestIdMiddleware:
    def __init__(self, log_filter: RequestIdFilter | None = None) -> None:
        self.filter = log_filter

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = (req.get_header("X-Request-ID") or "")[:128] or uuid.uuid4().hex
        req.context.request_id = rid
        resp.set_header("X-Request-ID", rid)
        if self.filter is not None:
            self.filter.local.id = rid
