"""Structured logs: one JSON line per record with its request id, category and level; no secret and no
prompt ever in a line (RQ's records included); one rotating file per category with LOG_FILES."""

from __future__ import annotations

import io
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common import logs
from services.common.jobs import Job, SamplingParams
from services.common.settings import Settings

PROMPT = "my secret plan is to count to seven"
PASSWORD = "hunter2-redis-pw"


class Sink:
    """Our handler writing into a buffer; records are made and handled directly, so no real logger changes."""

    def __init__(self, settings: Settings, proc: str = "test") -> None:
        self.buffer = io.StringIO()
        (self.handler,) = logs.handlers(settings, proc)
        self.handler.setStream(self.buffer)

    def log(self, name: str, level: int, msg: str, *args: object, exc_info=None, extra: dict | None = None) -> None:
        emit([self.handler], name, level, msg, *args, exc_info=exc_info, extra=extra)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.buffer.getvalue().splitlines()]


def emit(handlers: list[logging.Handler], name: str, level: int, msg: str, *args: object, exc_info=None, extra=None):
    record = logging.getLogger(name).makeRecord(name, level, "f.py", 1, msg, args, exc_info, extra=extra)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


@pytest.fixture()
def sink() -> Iterator[Sink]:
    """Outside any request: an earlier test's request (falcon.testing runs in this thread) left its id
    in the thread's context, as a served request leaves it on a gunicorn thread until the next one."""
    with logs.bound(None):
        yield Sink(Settings(redis_url=f"redis://:{PASSWORD}@10.0.0.5:6379/0"))


def test_a_record_is_one_json_line_with_request_id_category_and_level(sink):
    with logs.bound("req-abc"):
        sink.log("services.worker.runner", logging.WARNING, "job %s skipped", "chatcmpl-1")
    sink.log("services.api.observability.metrics", logging.INFO, "outside any request")
    first, second = sink.lines()
    assert first["request_id"] == "req-abc" and first["category"] == "model_operations"
    assert first["level"] == "WARNING" and first["logger"] == "services.worker.runner"
    assert first["message"] == "job chatcmpl-1 skipped" and first["proc"] == "test" and first["time"]
    assert second["request_id"] == "-" and second["category"] == "system_metrics"


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("services.api.pipeline.gateway", "api_requests"),
        ("gunicorn.access", "api_requests"),
        ("services.worker.engines.openai_http", "model_operations"),
        ("rq.worker", "model_operations"),
        ("services.api.observability.state_metrics", "system_metrics"),
        ("services.stack.respawn", "app"),
        ("respawn", "app"),
        ("httpx", "app"),
    ],
)
def test_loggers_map_to_the_seed_systems_categories(name, category):
    assert logs.category(name) == category


def test_passwords_and_keys_never_appear(sink):
    name = "services.api.app"
    sink.log(name, logging.ERROR, "redis error at redis://:%s@10.0.0.5:6379/0", PASSWORD)
    sink.log(name, logging.WARNING, "header Authorization: Bearer sk-live-123456 from %s", "client")
    sink.log(name, logging.WARNING, "headers %s", {"authorization": "Bearer sk-live-123456", "x": 1})
    sink.log(name, logging.WARNING, "upstream said Bearer sk-live-123456 was wrong")
    sink.log(name, logging.WARNING, "the password is %s", PASSWORD)  # the configured secret, wherever it is
    try:
        raise ConnectionError(f"cannot reach redis://user:{PASSWORD}@h/0")
    except ConnectionError:
        sink.log(name, logging.ERROR, "lost it", exc_info=sys.exc_info())
    text = sink.buffer.getvalue()
    assert PASSWORD not in text and "sk-live-123456" not in text, text
    assert "redis://:***@10.0.0.5" in text and "Authorization: ***" in text and "Bearer ***" in text
    assert len(sink.lines()) == 6 and "ConnectionError" in sink.lines()[-1]["exc_info"]


def rq_failure(sink: Sink, payload: dict) -> None:
    """What RQ's worker logs when a job raises (rq/worker/base.py handle_exception)."""
    try:
        Job.from_wire({**payload, "params": "not params"})
    except ValueError:
        exc = traceback.format_exc()
    sink.log(
        "rq.worker",
        logging.ERROR,
        "Worker %s: job %s: exception raised while executing (%s)\n%s",
        "w1",
        "chatcmpl-1",
        "services.worker.job.run",
        exc,
        extra={"func": "services.worker.job.run", "arguments": (payload,), "kwargs": {}, "job_id": "chatcmpl-1"},
    )


def test_rq_records_never_carry_the_prompt(sink):
    payload = Job(
        request_id="chatcmpl-1",
        model="m",
        kind="completion",
        prompt=PROMPT,
        params=SamplingParams(max_tokens=4),
        accepted_at=0,
        deadline=1,
    ).to_wire()
    sink.log("rq.worker", logging.INFO, "Worker %s: %s: %s (%s)", "w1", "q", PROMPT, "chatcmpl-1")  # per job: dropped
    rq_failure(sink, payload)
    (line,) = sink.lines()
    assert PROMPT not in json.dumps(line) and "arguments" not in line
    assert line["level"] == "ERROR" and "chatcmpl-1" in line["message"] and "traceback withheld" in line["message"]


def test_configure_quiets_rq_and_routes_everything_to_root(monkeypatch):
    root = logging.RootLogger(logging.WARNING)
    monkeypatch.setattr(logging, "root", root)  # configure() works on logging.getLogger(), this one
    for name in ("rq", "gunicorn.access", "gunicorn.error"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(logging, "captureWarnings", lambda capture: None)
    logs.configure(Settings(log_level="DEBUG"), "test")
    assert logging.getLogger("rq").level == logging.WARNING and root.level == logging.DEBUG
    assert logging.getLogger("gunicorn.access").propagate and not logging.getLogger("gunicorn.access").handlers
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, logs.JsonLines)


def test_log_files_one_rotating_file_per_category_and_errors(tmp_path: Path):
    settings = Settings(log_files=True, log_dir=tmp_path, log_format="json")
    handlers = logs.handlers(settings, "worker")
    for name, level in (("services.worker.slots", logging.ERROR), ("services.api.pipeline.gateway", logging.INFO)):
        emit(handlers, name, level, "hello from %s", name)
    for handler in handlers:
        handler.close()

    def read(category: str) -> list[str]:
        return [json.loads(line)["logger"] for line in (tmp_path / f"worker.{category}.log").read_text().splitlines()]

    assert read("model_operations") == ["services.worker.slots"]
    assert read("errors") == ["services.worker.slots"]
    assert read("api_requests") == ["services.api.pipeline.gateway"]
    assert read("app") == [] and read("system_metrics") == []


def test_text_format_keeps_the_request_id():
    sink = Sink(Settings(log_format="text"))
    with logs.bound("rid-9"):
        sink.log("t-text", logging.WARNING, "plain")
    assert "WARNING [rid-9] app t-text: plain" in sink.buffer.getvalue()


def test_the_job_carries_the_client_request_id_and_old_payloads_still_load():
    job = Job(
        request_id="chatcmpl-1",
        model="m",
        kind="completion",
        params=SamplingParams(max_tokens=4),
        accepted_at=0,
        deadline=1,
        client_request_id="rid-1",
    )
    assert Job.from_wire(job.to_wire()).client_request_id == "rid-1"
    assert job.next_attempt("chatcmpl-1").client_request_id == "rid-1"
    old = {k: v for k, v in job.to_wire().items() if k != "client_request_id"}
    assert Job.from_wire(old).client_request_id is None
