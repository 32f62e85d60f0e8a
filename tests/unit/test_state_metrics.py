"""The queue and worker gauges the alerts and dashboards read: what each reports, and silence when Redis is down."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.api.observability.state_metrics import StateCollector, Waiting
from services.common.registry import WorkerRecord


def record(worker_id: str, models: tuple[str, ...], *, busy: int = 0, draining: bool = False) -> WorkerRecord:
    return WorkerRecord(
        id=worker_id,
        host="h1",
        pid=1,
        engine="llama_cpp",
        device="cpu",
        models=models,
        slots=4,
        busy=busy,
        started_at=1000.0,
        draining=draining,
    )


def samples(collector: StateCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_gauges_for_queues_models_and_workers() -> None:
    workers = [record("w1", ("gemma",), busy=3), record("w2", ("qwen",), draining=True)]
    depth = {"gemma": 2, "qwen": 0, "big": 5, "idle": 0}
    queues = {m: Waiting(n, 1.5 * n) for m, n in depth.items()}
    got = samples(StateCollector(lambda: workers, lambda models: {m: queues[m] for m in models}, tuple(depth), "gemma"))

    for model, n in depth.items():
        assert got[("inference_num_requests_waiting", (("model_name", model),))] == n
        assert got[("inference_queue_oldest_age_seconds", (("model_name", model),))] == 1.5 * n
    # default and served models are reported, and a configured one only when jobs wait for it
    assert got[("inference_model_workers", (("model_name", "gemma"),))] == 1
    assert got[("inference_model_workers", (("model_name", "qwen"),))] == 0  # its only worker drains
    assert got[("inference_model_workers", (("model_name", "big"),))] == 0
    assert not any(name == "inference_model_workers" and ("model_name", "idle") in labels for name, labels in got)
    w1 = (("engine", "llama_cpp"), ("host", "h1"), ("worker", "w1"))
    assert got[("inference_worker_slots", w1)] == 4
    assert got[("inference_worker_busy_slots", w1)] == 3
    assert got[("inference_worker_draining", w1)] == 0
    assert got[("inference_worker_draining", (("engine", "llama_cpp"), ("host", "h1"), ("worker", "w2")))] == 1
    assert got[("inference_worker_start_time_seconds", w1)] == 1000.0
    assert got[("inference_worker_state", (*w1[:2], ("state", "serving"), w1[2]))] == 1
    assert got[("inference_worker_restarts", w1)] == 0


def test_redis_down_yields_no_gauges_and_no_error() -> None:
    def down() -> list[WorkerRecord]:
        raise redis.ConnectionError("refused")

    assert samples(StateCollector(down, lambda models: {}, ("gemma",), "gemma")) == {}
