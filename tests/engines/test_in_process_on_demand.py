"""On-demand loading with the in-process llama.cpp engine (no llama-server): a worker whose memory budget holds
Gemma 3 270M or SmolLM2 135M swaps between them for the jobs that wait in their queues, and answers each with
the model it named. The same WorkerProcess path serves MLX on a Mac."""

from __future__ import annotations

import time

import pytest
import redis

from services.common import events, keys
from services.common.catalog import Catalog
from services.common.redis_client import connect
from services.common.settings import Settings
from services.worker import budget
from services.worker.process import WorkerProcess
from tests.conftest import ROOT
from tests.support.queued_jobs import enqueue

pytestmark = pytest.mark.engine
GEMMA, SMOL = "gemma-3-270m", "smollm2-135m-instruct"
CONTEXT = 512


def answer(client: redis.Redis, model: str, rid: str, timeout: float = 120) -> events.Done:
    """Enqueue a completion as the API does (its lease included) and read its events to the end."""
    client.set(keys.lease(rid), 1, ex=120)
    enqueue(client, rid, model)
    last, deadline = "0-0", time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = client.xread({keys.stream(rid): last}, block=1000, count=100) or []
        for _stream, entries in reply:
            for entry_id, fields in entries:
                last = entry_id
                event = events.decode(fields)
                if isinstance(event, events.Failed):
                    pytest.fail(f"{model}: {event}")
                if isinstance(event, events.Done):
                    return event
    pytest.fail(f"no answer from {model} within {timeout:.0f} s")


def test_an_in_process_worker_swaps_models_for_the_jobs_that_wait(quiet_redis_url: str, gemma_path: object) -> None:
    catalog = Catalog.from_yaml(ROOT / "models" / "models.yaml")
    costs = [
        budget.cost(catalog.path_for(m, "llama_cpp", ROOT / "models"), slots=1, wanted=CONTEXT, cap=None, budget=2**40)
        for m in (GEMMA, SMOL)
    ]
    one_only = max(c.total for c in costs) + min(c.total for c in costs) // 2
    settings = Settings(
        redis_url=quiet_redis_url, n_ctx=CONTEXT, vllm_url="", llama_server_url="", worker_metrics_port=0
    )
    client = connect(quiet_redis_url)  # the worker's own: its idle slot threads outlive the test's client
    reader = redis.Redis.from_url(quiet_redis_url)
    worker = WorkerProcess(
        settings, client, catalog, engines=("llama_cpp",), device="cpu", slots=1, worker_id="inproc-ondemand",
        on_demand=True, memory_budget=one_only,
    )  # fmt: skip
    worker.start([GEMMA])
    try:
        assert set(worker.record().can_serve) >= {GEMMA, SMOL}
        for i, model in enumerate((SMOL, GEMMA, SMOL)):
            done = answer(reader, model, f"inproc-{i}")
            assert done.usage.completion_tokens > 0
            record = worker.record()
            assert list(record.loaded) == [model], "the budget holds one: the other was unloaded for it"
            assert record.memory_used <= record.memory_budget
            assert record.loaded[model].context == CONTEXT
    finally:
        worker.stop()
        reader.close()
