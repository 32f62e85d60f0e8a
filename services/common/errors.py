"""Errors as classes: each knows its HTTP status and OpenAI error type; API handlers render them.

The envelope is OpenAI's: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

ECHO_CHARS = 64
"""How much of a value the client sent an error message repeats: enough to recognise it, never a body's worth."""
MAX_MESSAGE_CHARS = 2048
MAX_PARAM_CHARS = 256
"""The envelope's own bound, whatever a message was built from (an engine's text, a path, a dict key)."""


def clip(value: object, limit: int = ECHO_CHARS) -> str:
    """`value` as an error message may repeat it: cut to `limit` characters, an ellipsis marking the cut."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class APIError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    should_retry: bool | None = None
    """Sent as `x-should-retry` (the openai SDK obeys it): True where nothing was enqueued, so a retry
    cannot run a generation twice; None leaves the choice to the client's defaults."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message, param = clip(message, MAX_MESSAGE_CHARS), None if param is None else clip(param, MAX_PARAM_CHARS)
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    """A valid key that may not do this: an admin route, or a model outside its allowlist."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class LengthRequired(APIError):
    status = 411
    type = "invalid_request_error"
    code = "length_required"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(APIError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"
    should_retry = True


class ServiceUnavailable(APIError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
    should_retry = True

    def __init__(self, message: str, *, retry_after: int = 5, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(retry_after))


class GatewayTimeout(APIError):
    status = 504
    type = "timeout"
    code = "timeout"


class ClientGone(APIError):
    """The client hung up while its request waited: nobody reads this answer (nginx logs it as 499)."""

    status = 499
    type = "client_closed_request"
    code = "client_closed_request"


class InternalError(APIError):
    status = 500
    type = "server_error"
    code = "internal_error"


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    404: NotFound,
    413: PayloadTooLarge,
    429: RateLimited,
    503: ServiceUnavailable,
    504: GatewayTimeout,
}


def from_status(status: int, message: str, *, code: str | None = None, param: str | None = None) -> APIError:
    """Rebuild an error a worker reported (status + message) as the matching class."""
    cls = _BY_STATUS.get(status, InternalError)
    return cls(message, code=code, param=param)
