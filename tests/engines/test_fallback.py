"""A worker whose first engine cannot load falls back to the next one, says why, and serves."""

from __future__ import annotations

import logging

import pytest

from services.common.catalog import Catalog
from services.common.redis_client import connect
from services.common.registry import Registry
from services.common.settings import Settings
from services.worker.engines.factory import EngineUnavailable
from services.worker.process import WorkerProcess
from tests.conftest import ROOT

pytestmark = pytest.mark.engine


def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, n_ctx=512, vllm_url="", llama_server_url="", worker_metrics_port=0)


def test_falls_back_and_logs_why(redis_url, redis_client, gemma_path, caplog):
    s = settings(redis_url)
    client = connect(redis_url)  # the worker's own: its idle slot threads outlive the test's client
    catalog = Catalog.from_yaml(ROOT / "models" / "models.yaml")
    worker = WorkerProcess(
        s, client, catalog, engines=("vllm", "llama_cpp"), device="cpu", slots=1, worker_id="fallback-test"
    )
    with caplog.at_level(logging.WARNING):
        worker.start(["gemma-3-270m"])
    try:
        assert worker.engine_name == "llama_cpp"
        assert any(
            "engine vllm cannot serve gemma-3-270m" in r.message and "VLLM_URL" in r.message for r in caplog.records
        )
        live = [w for w in Registry(redis_client, s.heartbeat_ttl).live() if w.id == "fallback-test"]
        assert [(w.id, w.engine, w.models) for w in live] == [("fallback-test", "llama_cpp", ("gemma-3-270m",))]
    finally:
        worker.stop()
    left = [w for w in Registry(redis_client, s.heartbeat_ttl).live() if w.id == "fallback-test"]
    assert left == [], "a stopped worker leaves the registry"


def test_no_engine_can_load_is_a_clear_error(redis_url, redis_client):
    s = settings(redis_url)
    catalog = Catalog.from_yaml(ROOT / "models" / "models.yaml")
    worker = WorkerProcess(s, redis_client, catalog, engines=("vllm",), device="cpu", slots=1, worker_id="none")
    with pytest.raises(EngineUnavailable, match=r"no engine could load qwen2\.5-0\.5b-instruct"):
        worker.start(["qwen-0.5b"])
    worker.stop()
