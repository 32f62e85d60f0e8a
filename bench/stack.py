"""A private native stack on free ports (redis, API replicas, worker, nginx) for one benchmark run.

It reuses the launcher's own process list (services/stack/procfile.prepare), so the bench measures
the very topology `make up` runs, with any engine worker command the caller passes in. Prometheus is
left out: scraping is not part of a request's path, and its CPU would only add noise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.cpu import CpuMeter
from bench.launcher import Launcher
from services.common.ports import free_port, free_run
from services.common.settings import ROOT, Settings, load_settings
from services.stack.procfile import prepare

READY_TIMEOUT_S = 180.0


@dataclass
class RunningStack:
    url: str
    api_urls: list[str]
    launcher: Launcher
    settings: Settings

    def meter(self) -> CpuMeter:
        """CPU by role: both API replicas together, as LiteLLM's figure is for its whole proxy."""
        procs = self.launcher.procs
        groups = {
            "api": [p.pid for name, p in procs.items() if name.startswith("api-")],
            "nginx": [procs["nginx"].pid],
            "redis": [procs["redis"].pid],
            "worker": [procs["worker"].pid],
        }
        return CpuMeter(groups)


def bench_settings(run_dir: Path, **overrides: object) -> Settings:
    """The user's settings (from the environment) with every port and path made private."""
    base = load_settings()
    update: dict[str, object] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "api_base_port": free_run(base.api_replicas),
        "worker_metrics_port": free_port(),
        "prometheus_port": free_port(),
        "nginx_status_port": free_port(),
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "redis_password": "",
        "redis_bind": "127.0.0.1",
        "run_dir": run_dir,
        "log_dir": run_dir / "logs",
    }
    update.update(overrides)
    return base.model_copy(update=update)


@contextlib.contextmanager
def private_stack(
    worker_argv: Sequence[str], *, label: str = "stack", model: str | None = None, **overrides: object
) -> Iterator[RunningStack]:
    """Start everything, wait until nginx answers with the model served, and always stop it all.

    `worker_argv` is the worker command after the interpreter (e.g. `-m services.worker --engine
    llama_cpp`); `--metrics-port` and `--worker-id` are added here.
    """
    run_dir = ROOT / "run" / f"bench-{os.getpid()}-{label}"
    settings = bench_settings(run_dir, **overrides)
    stack = prepare(settings, worker=False, python=sys.executable)
    model = model or settings.default_model
    launcher = Launcher(settings.log_dir)
    try:
        redis_proc = stack.proc("redis")
        launcher.start("redis", redis_proc.argv, redis_proc.env, redis_proc.cwd)
        client = redis.Redis.from_url(stack.redis_url, socket_timeout=2)
        launcher.wait_ready("redis", client.ping, 30)
        api_urls = []
        for proc in stack.procs:
            if proc.name.startswith("api-"):
                launcher.start(proc.name, proc.argv, proc.env, proc.cwd)
                api_urls.append(proc.ready_url.removesuffix("/health") if proc.ready_url else "")
        # an API replica's environment has Redis's URL and password (redis-server's own has neither)
        api_env = stack.proc("api-1").env
        worker_env = {k: v for k, v in api_env.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "API_REPLICA")}
        metrics_port = str(settings.worker_metrics_port)
        argv = [sys.executable, *worker_argv, "--metrics-port", metrics_port, "--worker-id", f"bench-{label}"]
        launcher.start("worker", argv, worker_env, ROOT)
        nginx = stack.proc("nginx")
        launcher.start("nginx", nginx.argv, nginx.env, nginx.cwd)
        for proc in stack.procs:
            if proc.name.startswith("api-") or proc.name == "nginx":
                url = proc.ready_url
                launcher.wait_ready(proc.name, lambda url=url: httpx.get(url, timeout=2).status_code == 200, 60)
        health = f"{stack.public_url}/health"
        launcher.wait_ready(
            "worker", lambda: model in httpx.get(health, timeout=2).json().get("models", []), READY_TIMEOUT_S
        )
        time.sleep(settings.heartbeat_interval)  # let every replica's registry cache see the worker
        yield RunningStack(stack.public_url, api_urls, launcher, settings)
    except BaseException:
        launcher.stop_all()
        print(f"bench: the private stack's logs are in {settings.log_dir}", file=sys.stderr)
        raise
    launcher.stop_all()
    shutil.rmtree(run_dir, ignore_errors=True)  # a clean run leaves nothing behind; a failed one keeps its logs
