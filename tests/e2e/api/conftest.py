"""The spine as users run it: a worker process and gunicorn serving the API, on free ports."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.common.ports import free_port
from tests.conftest import ROOT, RUN_DIR
from tests.support.procs import redis_command, running, wait_until, which

MAX_BODY = 65536
MODEL = "gemma-3-270m"
COUNTING = {"prompt": "1, 2, 3, 4, 5,", "temperature": 0}
"""Greedy counting: Gemma 270M keeps counting without end-of-sequence, so a long request really is long."""


@dataclass
class Api:
    url: str
    env: dict[str, str]
    logs: Path

    def v1(self) -> str:
        return f"{self.url}/v1"


def base_env(redis_url: str, logs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    env.update(
        REDIS_URL=redis_url,
        HOST="127.0.0.1",
        WORKERS="2",
        API_THREADS="16",
        DEFAULT_MAX_TOKENS="32",
        REQUEST_TIMEOUT="60",
        MAX_REQUEST_BYTES=str(MAX_BODY),
        N_CTX="2048",
        LOG_LEVEL="INFO",
        HEARTBEAT_INTERVAL="0.5",
        HEARTBEAT_TTL="3",
        SSE_KEEPALIVE="1",
        LEASE_TTL="3",  # short, so requests longer than it prove the renewal
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_api(env: dict[str, str], log: Path):
    port = free_port()
    env = env | {"API_BASE_PORT": str(port)}
    cmd = [sys.executable, "-m", "gunicorn", "-c", "services/api/gunicorn_conf.py", "services.api.wsgi:create()"]
    return running(cmd, log=log, env=env, cwd=ROOT), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def worker_env(redis_url, gemma_path) -> dict[str, str]:
    logs = RUN_DIR / f"e2e-{os.getpid()}"
    return base_env(redis_url, logs)


@pytest.fixture(scope="session")
def worker(worker_env) -> Iterator[int]:
    """One llama.cpp worker with two slots; yields its metrics port."""
    port = free_port()
    logs = RUN_DIR / f"e2e-{os.getpid()}"
    with start_worker(worker_env, logs / "worker.log", f"e2e-{os.getpid()}", slots=2, metrics_port=port) as proc:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200, 120, "worker", proc)
        yield port


@pytest.fixture(scope="session")
def api(worker, worker_env) -> Iterator[Api]:
    logs = RUN_DIR / f"e2e-{os.getpid()}"
    ctx, url = start_api(worker_env, logs / "api.log")
    with ctx as proc:
        wait_until(lambda: "gemma-3-270m" in httpx.get(f"{url}/health").json()["models"], 60, "api", proc)
        yield Api(url, worker_env, logs)


def start_redis(port: int, data: Path):
    cmd = redis_command(which("redis-server"), port, data)
    return running(cmd, log=data / "redis.log")


def start_worker(env: dict[str, str], log: Path, wid: str, *, slots: int = 1, metrics_port: int = 0):
    """A llama.cpp worker process; the caller waits for what it needs (metrics, registration)."""
    cmd = [sys.executable, "-m", "services.worker", "--engine", "llama_cpp", "--slots", str(slots)]
    cmd += ["--metrics-port", str(metrics_port), "--worker-id", wid]
    return running(cmd, log=log, env=env, cwd=ROOT)


def serving(url: str, model: str = MODEL) -> bool:
    return model in httpx.get(f"{url}/health", timeout=5).json().get("models", [])


@pytest.fixture()
def private(gemma_path, tmp_path):
    port = free_port()
    data = RUN_DIR / f"resilience-{port}"
    data.mkdir(parents=True, exist_ok=True)
    env = base_env(f"redis://127.0.0.1:{port}/0", data, WORKERS="1")
    return port, data, env
