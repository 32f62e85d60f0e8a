"""Logging for every process: one JSON line per record, with its category and the request's X-Request-ID.

One module so that nginx, the API and the worker agree on field names (a request is followed across
processes by `request_id`), and so that secrets and prompts are kept out in one place, RQ's records included.
Categories are those of the system we replace: app, api_requests, model_operations, system_metrics, and
errors (every record at ERROR and above, whatever its category; its own file when LOG_FILES is on).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from services.common.settings import Settings

CATEGORIES = ("app", "api_requests", "model_operations", "system_metrics", "errors")
_BY_PREFIX = (  # first match wins: the specific names before their packages
    ("services.api.observability.metrics", "system_metrics"),
    ("services.api.observability.state_metrics", "system_metrics"),
    ("services.api.observability.traffic", "system_metrics"),
    ("services.worker.metrics", "system_metrics"),
    ("services.api", "api_requests"),
    ("gunicorn.access", "api_requests"),
    ("services.worker", "model_operations"),
    ("services.common.supervisor", "model_operations"),  # engine processes dying and restarting
    ("rq", "model_operations"),
)
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(category)s %(name)s: %(message)s"
REDACTED = "***"

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The X-Request-ID of the request this thread works for: set by the API's middleware, and by the worker
around each job (the id travels in the job as `client_request_id`)."""


def category(logger_name: str) -> str:
    for prefix, name in _BY_PREFIX:
        if logger_name == prefix or logger_name.startswith(prefix + "."):
            return name
    return "app"


@contextmanager
def bound(rid: str | None) -> Iterator[None]:
    """Every record logged inside carries `rid`."""
    token = request_id.set(rid)
    try:
        yield
    finally:
        request_id.reset(token)


class Redactor:
    """Takes credentials out of text: passwords in URLs, Authorization headers, bearer tokens, and the
    configured secrets themselves wherever they appear."""

    _PATTERNS = (
        (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/@:]*:)[^\s/@]+@", re.I), rf"\g<1>{REDACTED}@"),
        (re.compile(r"""(\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?)[^"'\r\n,}]+""", re.I), rf"\g<1>{REDACTED}"),
        (re.compile(r"\b(bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), rf"\g<1>{REDACTED}"),
        (
            re.compile(r"""(\b(?:password|passwd|api_key|token)["']?\s*[:=]\s*["']?)[^\s"',}&]+""", re.I),
            rf"\g<1>{REDACTED}",
        ),
    )

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for pattern, repl in self._PATTERNS:
            text = pattern.sub(repl, text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


class ContextFilter(logging.Filter):
    """Adds `request_id` and `category` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get() or "-"
        if not hasattr(record, "category"):
            record.category = category(record.name)
        return True


class SafetyFilter(logging.Filter):
    """Secrets never leave; prompts leave only with LOG_PROMPTS=true.

    RQ logs each job at INFO and, on a failure, the job's arguments (our payload, prompt included) as
    extra fields and the traceback (which can quote them): its records below WARNING are dropped, and its
    arguments and tracebacks withheld unless prompts may be logged.
    """

    def __init__(self, redact: Redactor, *, log_prompts: bool = False) -> None:
        super().__init__()
        self.redact = redact
        self.log_prompts = log_prompts

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_safe", False):
            return True
        is_rq = record.name == "rq" or record.name.startswith("rq.")
        if is_rq and record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if is_rq and not self.log_prompts:
            for name in ("arguments", "kwargs"):
                if hasattr(record, name):
                    delattr(record, name)
            if "\n" in message or record.exc_info:
                message = message.split("\n", 1)[0] + " (traceback withheld: it may quote the job; LOG_PROMPTS=false)"
                record.exc_info = record.exc_text = None
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            record.http = _access_fields(record.args)
        record.msg, record.args = self.redact(message), ()
        record._safe = True
        return True


def _access_fields(atoms: dict) -> dict:
    """gunicorn's access atoms as fields: no query string and no headers, so no prompt and no key."""
    return {
        "method": atoms.get("m"),
        "path": atoms.get("U"),
        "status": int(atoms["s"]) if str(atoms.get("s", "")).isdigit() else atoms.get("s"),
        "bytes": atoms.get("B"),
        "duration_ms": atoms.get("M"),
        "remote": atoms.get("h"),
    }


class JsonLines(JsonFormatter):
    """python-json-logger's formatter with our field names; exception text is redacted too."""

    def __init__(self, proc: str, redact: Redactor) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"proc": proc},
            reserved_attrs=[*RESERVED_ATTRS, "taskName", "_safe"],
            timestamp="time",
            json_ensure_ascii=False,
        )
        self.redact = redact

    def formatException(self, ei) -> str:
        return self.redact(super().formatException(ei))


class TextLines(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redact

    def formatException(self, ei) -> str:
        return self.redact(super().formatException(ei))


class _OneCategory(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.category = name

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "category", None) == self.category


def secrets_of(settings: Settings) -> list[str]:
    """The literal secrets this process knows, to be replaced wherever a log line quotes them."""
    found = [settings.redis_password, os.environ.get("REDIS_PASSWORD", ""), os.environ.get("HF_TOKEN", "")]
    match = re.match(r"^[a-z]+://[^/@]*:([^/@]+)@", settings.redis_url)
    if match:
        found.append(match.group(1))
    return [s for s in found if s]


def handlers(settings: Settings, proc: str) -> list[logging.Handler]:
    """stdout, or with LOG_FILES one rotating file per category under LOG_DIR (`<proc>.<category>.log`,
    errors.log taking every record at ERROR and above). `proc` names the process, so processes never
    rotate one another's files."""
    redact = Redactor(secrets_of(settings))
    formatter = JsonLines(proc, redact) if settings.log_format == "json" else TextLines(redact)
    if not settings.log_files:
        out: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    else:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for name in CATEGORIES:
            path = Path(settings.log_dir) / f"{proc}.{name}.log"
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=settings.log_file_max_mb * 1_048_576, backupCount=settings.log_file_backups
            )
            if name == "errors":
                handler.setLevel(logging.ERROR)
            else:
                handler.addFilter(_OneCategory(name))
            out.append(handler)
    for handler in out:
        handler.filters.insert(0, SafetyFilter(redact, log_prompts=settings.log_prompts))
        handler.filters.insert(0, ContextFilter())
        handler.setFormatter(formatter)
    return out


def configure(settings: Settings, proc: str) -> None:
    """Route every logger (ours, RQ's, gunicorn's, libraries') through our handlers on the root logger."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers(settings, proc):
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.getLogger("rq").setLevel(logging.WARNING)  # RQ resets rq.worker's level per slot; the filter holds
    for name in ("gunicorn.error", "gunicorn.access"):  # in a gunicorn worker: through our handlers, once
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.captureWarnings(True)
