"""The worker's own llama-server: started as a child, watched, restarted with backoff when it dies.

Owning the process (rather than finding it at a URL) is what lets the worker see a crash the moment it
happens, with the signal, and stop advertising the model before any client is routed to a dead server.
It also lets the worker give it a key made when the worker starts, which no one else is told: only the
native stack's Prometheus reads it, from a file only the stack's user may read (`write_key`).
"""

from __future__ import annotations

import http.client
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from services.common.catalog import Catalog
from services.common.settings import Settings
from services.common.supervisor import Deaths, Policy, State, Supervisor, answers
from services.worker.engines.llama_server_process import LlamaServerCommand, find_binary

log = logging.getLogger(__name__)


def command(
    settings: Settings,
    catalog: Catalog,
    model_id: str | None = None,
    *,
    port: int | None = None,
    slot_context: int | None = None,
    api_key: str | None = None,
) -> LlamaServerCommand:
    """llama-server for one model on loopback, one slot per concurrent request: on LLAMA_SERVER_PORT unless
    `port`, at the model's own context capped by N_CTX unless the memory budget chose `slot_context`, with a
    new key unless the worker's (`api_key`, shared by every llama-server it starts)."""
    model_id = catalog.resolve(model_id or settings.default_model)
    path = catalog.path_for(model_id, "llama_server", settings.models_dir)
    if path is None:
        raise ValueError(f"models.yaml has no llama_server weights for {model_id}")
    spec = catalog.models[model_id]
    template = (spec.source("llama_server") or {}).get("chat_template_file")
    return LlamaServerCommand(
        path,
        port or settings.llama_server_port,
        slots=settings.llama_server_parallel,
        slot_context=slot_context or spec.runtime_context(settings.n_ctx),
        threads=settings.n_threads,
        chat_template=spec.chat_format,
        chat_template_file=settings.models_dir / template if template else None,
        alias=model_id,
        extra=("--embeddings",) if spec.kind == "embedding" else (),  # it then serves /v1/embeddings only
        nice=settings.llama_server_nice,
        api_key=api_key or secrets.token_urlsafe(32),
    )


def write_key(path: Path, key: str) -> None:
    """The key in a file of mode 0600 (Prometheus' credentials_file), replaced whole so no reader sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.replace(tmp, path)


class HealthProbe:
    """GET /health on one kept-alive connection: llama-server answers 200 once its model is loaded (503
    while loading). A watch probes every second for as long as the worker lives, so each probe must be
    cheap: a fresh httpx client per probe built an SSL context (about 19 ms of CPU), and even a kept-alive
    httpx client cost about 1.5 ms a probe on 2 cores; the standard library's HTTPConnection costs a
    fraction of that. Any failure drops the connection, so the next probe dials anew."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._target: tuple[str, int | None, str] | None = None

    def __call__(self, url: str) -> bool:
        parts = urlsplit(url)
        target = (parts.hostname or "127.0.0.1", parts.port, parts.path.rstrip("/") + "/health")
        if self._conn is None or self._target != target:
            self.close()
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            self._conn, self._target = cls(target[0], target[1], timeout=self.timeout), target
        try:
            self._conn.request("GET", target[2])
            response = self._conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status == 200

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def healthy(url: str) -> bool:
    """One probe on a client of its own, for callers that ask once (a start-up wait)."""
    probe = HealthProbe()
    try:
        return probe(url)
    finally:
        probe.close()


def supervise(
    cmd: LlamaServerCommand,
    *,
    log_path: Path | None,
    on_up: Callable[[], None],
    on_down: Callable[[str], None],
    policy: Policy | None = None,
    binary: str | None = None,
) -> Supervisor:
    """A Supervisor for `cmd` (not started yet). llama-server never talks to Redis: it gets none of its
    settings, so the password in REDIS_URL stays with the processes that need it; its key goes in its
    environment. /health needs no key, so the probe sends none."""
    probe = HealthProbe()
    return Supervisor(
        "llama-server",
        cmd.argv(binary or find_binary()),
        env=cmd.env({k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}),
        log_path=log_path,
        ready=lambda: probe(cmd.url),
        on_up=on_up,
        on_down=on_down,
        policy=policy,
    )


class EngineProcess(Protocol):
    """What the worker reads of the process behind its engine: a Supervisor or an UpstreamWatch."""

    name: str
    state: State
    restarts: int
    last_exit: str | None
    pid: int | None

    def start(self) -> None: ...
    def wait_ready(self, timeout: float) -> bool: ...
    def stop(self, grace: float = ...) -> object: ...


class UpstreamWatch:
    """A sidecar someone else runs (compose's llama-server container, a vLLM server): polled, not owned.

    The worker cannot see its death or restart it (compose's `restart:` policy does), but it can stop
    advertising the model the moment the sidecar stops answering, and advertise it again once it is back.
    It offers the Supervisor's attributes the worker reads (state, restarts, last_exit, pid).
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
        interval: float = 1.0,
        policy: Policy | None = None,
        check: Callable[[str], bool] | None = None,
        serving: bool = True,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/").removesuffix("/v1")
        self.on_up = on_up
        self.on_down = on_down
        self.interval = interval
        self.policy = policy or Policy()
        self.check = check or HealthProbe()
        self.state = State.SERVING if serving else State.STARTING  # the worker just loaded through it
        self.restarts = 0
        self.last_exit: str | None = None
        self.pid: int | None = None
        self._downs = Deaths(self.policy.window)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"watch-{self.name}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.state != State.SERVING:
            time.sleep(0.1)
        return self.state == State.SERVING

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(grace)
        self.state = State.STOPPED

    def _loop(self) -> None:
        while not self._stop.is_set():
            up = answers(lambda: self.check(self.url))
            if up and self.state != State.SERVING:
                self.state = State.SERVING
                log.info("%s at %s serves", self.name, self.url)
                self.on_up()
            elif not up and self.state == State.SERVING:
                self._went_down()
            self._stop.wait(self.interval)

    def _went_down(self) -> None:
        downs = self._downs.add()
        self.restarts += 1
        self.last_exit = "stopped answering"
        looping = downs >= self.policy.loop_after
        self.state = State.CRASH_LOOP if looping else State.RESTARTING
        log.error(
            "%s at %s stopped answering%s; its models leave the registry until it is back",
            self.name,
            self.url,
            f" [crash loop: {downs} times in {self.policy.window:.0f} s]" if looping else "",
        )
        self.on_down(self.last_exit)
