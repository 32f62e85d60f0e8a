"""The native stack for e2e tests: services.stack's own process list, started one process at a time
on free ports in a private run directory, so a test can kill (and restart) a single process by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from services.common.ports import free_port, free_run
from services.common.redis_client import tls_options
from services.common.settings import Settings
from services.stack.procfile import Proc, Stack, prepare
from tests.support.procs import stop, wait_until

# Small, fast settings for a 2-core machine; a test may override any of them.
E2E_SETTINGS: dict[str, object] = {
    "host": "127.0.0.1",
    "api_replicas": 2,
    "workers": 2,
    "api_threads": 16,
    "inference_engine": "auto",  # as `make up`: llama-server beside the worker where it is built
    "llama_server_parallel": 4,
    "default_model": "gemma-3-270m",
    "worker_slots": 1,
    "n_ctx": 2048,
    "request_timeout": 240,  # generous: 50 queued requests on one slot of a busy 2-core machine
    "nginx_read_timeout": 300,
    "max_request_bytes": 65536,
    "default_max_tokens": 32,
    "heartbeat_interval": 0.5,
    "heartbeat_ttl": 3,
    "sse_keepalive": 5,
    "log_level": "INFO",
    "embedding_model": "",  # no embedding worker unless a test asks for one (tests/e2e/surface)
    "chat_model": "",  # no chat worker either, chats stay on Gemma (tests/e2e/stack/test_chat_model.py asks for one)
    "load_on_demand": False,  # start models only; tests/e2e/stack/test_on_demand.py loads models on request
}


def e2e_settings(run_dir: Path, **overrides: object) -> Settings:
    values = dict(E2E_SETTINGS)
    values |= {
        "port": free_port(),
        "api_base_port": free_run(2),
        "worker_metrics_port": free_port(),
        "llama_server_port": free_port(),
        "embedding_server_port": free_port(),
        "chat_server_port": free_port(),
        "prometheus_port": free_port(),
        "nginx_status_port": free_port(),
        "nginx_exporter_port": free_port(),
        "redis_exporter_port": free_port(),
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "redis_password": "e2e-" + os.urandom(8).hex(),
        "run_dir": run_dir,
        "log_dir": run_dir / "logs",
    }
    values |= overrides
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class NativeStack:
    """A running stack; `procs` holds the live Popen of each process by name."""

    settings: Settings
    stack: Stack
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.stack.public_url

    @property
    def redis_url(self) -> str:
        return self.stack.redis_url

    def replica_url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.settings.api_base_port + n - 1}"

    def log(self, name: str) -> Path:
        return self.stack.layout.log(name)

    def start(self, name: str, timeout: float = 120) -> subprocess.Popen:
        proc = self.stack.proc(name)
        popen = spawn(proc, self.log(name))
        self.procs[name] = popen
        if name == "redis":
            ping = redis.Redis.from_url(self.redis_url, **tls_options(self.settings)).ping  # type: ignore[arg-type]
            wait_until(ping, timeout, name, popen)
        elif proc.ready_url:
            # any HTTP answer means it listens (an API's /health may say 503 until a worker beats)
            wait_until(lambda: httpx.get(proc.ready_url, timeout=2).status_code > 0, timeout, name, popen)
        return popen

    def kill(self, name: str) -> None:
        """SIGKILL the process group we started for `name`: a crash, not a clean stop."""
        popen = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            stop(self.procs.pop(name))

    def model_served(self) -> bool:
        """Through nginx, from /health, which needs no key when the stack has API keys."""
        health = httpx.get(f"{self.url}/health", timeout=5).json()
        return self.settings.default_model in health.get("models", [])


def spawn(proc: Proc, log: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start one process in its own session (so its whole group can be stopped), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [*prefix, *proc.argv], stdout=out, stderr=subprocess.STDOUT, env=dict(proc.env), cwd=proc.cwd,
            start_new_session=True,
        )  # fmt: skip


def child_env() -> Mapping[str, str]:
    """This environment less what would leak into the stack's children from an outer run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}


@contextlib.contextmanager
def native_stack(settings: Settings, *, worker: bool = True, scrape_interval: str = "1s") -> Iterator[NativeStack]:
    """Start every process of the stack in order, each waited for; stop them all, by PID, on exit."""
    running = NativeStack(settings, prepare(settings, worker=worker, scrape_interval=scrape_interval,
                                            base_env=child_env()))  # fmt: skip
    try:
        for proc in running.stack.procs:
            running.start(proc.name)
        if worker:
            wait_until(running.model_served, 120, "the worker's model in /v1/models", running.procs["worker"])
        yield running
    finally:
        running.stop_all()
