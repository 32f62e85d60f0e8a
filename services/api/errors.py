"""Error handlers: every failure, Falcon's own 404/405 included, leaves as OpenAI's error envelope."""

from __future__ import annotations

import logging

import falcon

from services.common.errors import APIError, InternalError, clip

log = logging.getLogger(__name__)

_FALCON_TYPES = {
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


def render(resp: falcon.Response, error: APIError) -> None:
    resp.status = error.status
    resp.media = error.envelope()
    for name, value in error.headers.items():
        resp.set_header(name, value)
    if error.should_retry is not None:
        resp.set_header("x-should-retry", "true" if error.should_retry else "false")


def handle_api_error(req: falcon.Request, resp: falcon.Response, ex: APIError, params: dict) -> None:
    render(resp, ex)


def handle_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict) -> None:
    """Falcon's routing errors (no such route, wrong method) in our envelope, headers such as Allow kept."""
    status = ex.status_code
    err_type, code = _FALCON_TYPES.get(status, ("invalid_request_error" if status < 500 else "server_error", None))
    message = ex.description or ex.title or "error"
    if status == 404:
        message = f"Unknown request URL: {clip(req.method)} {clip(req.path)}. Please check the URL for typos."
    elif status == 405:
        message = f"Method {clip(req.method)} is not allowed for {clip(req.path)}."
    resp.status = status
    resp.media = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    for name, value in (ex.headers or {}).items():
        resp.set_header(name, value)


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    """Anything else is our bug: log the traceback, never show it."""
    if isinstance(ex, falcon.HTTPError):
        handle_http_error(req, resp, ex, params)
        return
    log.exception("unhandled error on %s %s", req.method, req.path)
    render(resp, InternalError("The server had an error while processing your request."))


def install(app: falcon.App) -> None:
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(APIError, handle_api_error)
