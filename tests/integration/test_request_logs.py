"""One request through the real API and the worker's job entry on a real Redis: the X-Request-ID is on the
API's and the worker's log lines, the prompt on none (nor in RQ's), and the reply says the gateway's overhead."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest
import redis
from falcon import testing
from rq import Queue, SimpleWorker
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from services.api.app import create_app
from services.api.observability.overhead import HEADER
from services.common import keys, logs
from services.common.catalog import Catalog
from services.common.events import Delta, Done, Started, Usage
from services.common.jobs import Job
from services.common.registry import Registry, WorkerRecord
from services.common.settings import Settings
from services.worker import job as job_entry
from services.worker.publisher import StreamPublisher

pytestmark = pytest.mark.integration
PROMPT = "the launch code is 0000 and nobody may read it"


class EchoRunner:
    """Stands in for JobRunner: logs as the runner does, and answers after a pause (the engine's time)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def run(self, job: Job, prelude=None) -> None:
        logging.getLogger("services.worker.runner").info("job %s generating", job.request_id)
        out = StreamPublisher(self.client, job.request_id, 60, job.deadline)
        out.publish(Started("w1", time.time()))
        time.sleep(0.2)
        out.publish(Delta("x", 1))
        out.publish(Done("length", Usage(3, 1), {"accepted": job.accepted_at, "done": time.time()}))


def fake_worker(client: redis.Redis, model: str, stop: threading.Event) -> None:
    job_entry.bind(EchoRunner(client))
    while not stop.is_set():
        got = client.blpop("rq:queue:" + keys.queue_name(model), 0.5)
        if got:
            job_entry.run(RQJob.fetch(got[1].decode(), connection=client, serializer=JSONSerializer).args[0])


@pytest.fixture()
def captured():
    """Our JSON handler on the root logger for the test, at INFO."""
    buffer = io.StringIO()
    (handler,) = logs.handlers(Settings(), "it")
    handler.setStream(buffer)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize("stream", [False, True])
def test_request_id_on_api_and_worker_lines_no_prompt_and_overhead_header(redis_client, redis_url, captured, stream):
    settings = Settings(redis_url=redis_url)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    model = next(m for m in catalog.models if m != catalog.default)  # the e2e suite's workers serve the default
    record = WorkerRecord(id="w1", host="h", pid=1, engine="x", device="cpu", models=(model,), slots=8, busy=0,
                          started_at=time.time())  # fmt: skip
    registry = Registry(redis_client, 60)
    registry.beat(record)
    api = testing.TestClient(create_app(settings, redis.Redis.from_url(redis_url), catalog))
    stop = threading.Event()
    worker = threading.Thread(target=fake_worker, args=(redis.Redis.from_url(redis_url), model, stop), daemon=True)
    worker.start()
    rid = f"trace-{stream}-{time.monotonic_ns()}"
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4, "stream": stream}
    try:
        started = time.perf_counter()
        reply = api.simulate_post("/v1/completions", json=body, headers={"X-Request-ID": rid})
        total_ms = (time.perf_counter() - started) * 1000
    finally:
        stop.set()
        worker.join(5)
        registry.remove(record.id)  # else the e2e tests sharing this Redis list the model for a minute
    assert reply.status_code == 200 and reply.headers["X-Request-ID"] == rid
    overhead = float(reply.headers[HEADER])
    assert 0 <= overhead < total_ms, (overhead, total_ms)
    if not stream:  # the engine's 0.2 s is not the gateway's
        assert overhead < total_ms - 150, (overhead, total_ms)
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    ours = [line for line in lines if line["request_id"] == rid]
    assert {line["category"] for line in ours} >= {"api_requests", "model_operations"}, lines
    assert any(line["logger"] == "services.worker.runner" for line in ours)
    assert PROMPT not in captured.getvalue()


def test_rq_logs_no_prompt_and_no_per_job_info_line(redis_url, captured):
    """A real RQ worker running a job that fails: its records reach our handler without the job's arguments."""
    client = redis.Redis.from_url(redis_url)
    queue = Queue("logs-test", connection=client, serializer=JSONSerializer)
    queue.enqueue("services.worker.job.run", {"v": 1, "prompt": PROMPT}, job_id="logs-job-1", description="logs-job-1")
    SimpleWorker([queue], connection=client, serializer=JSONSerializer).work(burst=True, logging_level="INFO")
    text = captured.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    rq_lines = [line for line in lines if line["logger"].startswith("rq")]
    assert any(line["level"] == "ERROR" and "logs-job-1" in line["message"] for line in rq_lines), lines
    assert all(line["level"] in ("WARNING", "ERROR", "CRITICAL") for line in rq_lines), rq_lines
    assert PROMPT not in text
