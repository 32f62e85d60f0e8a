"""The native stack as a list of processes: the same topology as docker-compose.yml, without Docker.

`prepare()` writes every config under RUN_DIR and returns the processes; `make up` runs each under a
Supervisor that restarts it when it dies (services/stack/supervise.py), and the e2e tests start the very
same list one by one, so they can kill a single replica by its PID.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.catalog import Catalog
from services.common.settings import ROOT, Settings
from services.stack import exporters, nginx_conf, prometheus_conf, redis_conf, sidecar
from services.stack.binaries import require
from services.stack.layout import Layout
from services.worker.detect import Facts
from services.worker.engines.llama_server_process import LlamaServerMissing, find_binary

GUNICORN_CONF = ROOT / "services" / "api" / "gunicorn_conf.py"
API_APP = "services.api.wsgi:create()"


@dataclass(frozen=True)
class Proc:
    """One long-running process: what to exec, its whole environment, and a URL that answers once ready."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    ready_url: str | None = None
    cwd: Path = ROOT


@dataclass(frozen=True)
class Stack:
    """What `prepare()` made: the processes in start order and the URLs clients use."""

    procs: tuple[Proc, ...]
    layout: Layout
    redis_url: str = field(repr=False)
    public_url: str
    prometheus_url: str

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as an environment variable, so each child sees exactly the launcher's settings."""
    return {name.upper(): "" if value is None else str(value) for name, value in settings.model_dump().items()}


REDIS_SECRETS = ("REDIS_URL", "REDIS_PASSWORD", "REMOTE_REDIS_URL")


def without_redis(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a process that never talks to Redis (redis-server reads its own file, nginx,
    Prometheus): none of the variables that may hold its password."""
    return {k: v for k, v in env.items() if k not in REDIS_SECRETS}


def _waiting_for_redis(python: str, argv: list[str]) -> tuple[str, ...]:
    return (python, "-m", "services.stack.wait", "--", *argv)


def _respawned(python: str, name: str, argv: list[str]) -> list[str]:
    """Restarted with backoff, and its registry record removed, when it dies (services/stack/respawn.py)."""
    return [python, "-m", "services.stack.respawn", name, "--", *argv]


def api_procs(settings: Settings, layout: Layout, env: Mapping[str, str], python: str) -> list[Proc]:
    gunicorn = str(Path(python).parent / "gunicorn")
    procs = []
    for i in range(settings.api_replicas):
        port = settings.api_base_port + i
        metrics = layout.metrics_dir(i + 1)
        shutil.rmtree(metrics, ignore_errors=True)  # stale multiprocess files would add old counts
        metrics.mkdir(parents=True)
        argv = [gunicorn, "-c", str(GUNICORN_CONF), API_APP, "--bind", f"127.0.0.1:{port}"]
        # gunicorn's control socket defaults to one path per user: replicas must not share it
        argv += ["--control-socket", str(layout.run_dir / f"api-{i + 1}.ctl")]
        procs.append(
            Proc(
                f"api-{i + 1}",
                _waiting_for_redis(python, argv),
                {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics), "API_REPLICA": f"api-{i + 1}"},
                ready_url=f"http://127.0.0.1:{port}/health",
            )
        )
    return procs


def worker_proc(
    settings: Settings,
    env: Mapping[str, str],
    python: str,
    *,
    engine: str | None = None,
    upstream_url: str | None = None,
    slots: int | None = None,
    spawn_llama_server: bool = False,
    sidecar_key_file: Path | None = None,
) -> Proc:
    """The default model's worker; with LOAD_ON_DEMAND also the one that loads other catalog models on request."""
    argv = [
        python, "-m", "services.worker",
        "--engine", engine or settings.inference_engine,
        "--model", settings.default_model,
        "--slots", str(slots or settings.worker_slots),
        "--metrics-port", str(settings.worker_metrics_port),
    ]  # fmt: skip
    if upstream_url:
        argv += ["--upstream-url", upstream_url]
    if sidecar_key_file:
        argv += ["--sidecar-key-file", str(sidecar_key_file)]
    if spawn_llama_server:
        argv.append("--spawn-llama-server")
    if settings.load_on_demand:
        argv.append("--on-demand")
    ready = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics" if settings.worker_metrics_port else None
    return Proc("worker", _waiting_for_redis(python, _respawned(python, "worker", argv)), dict(env), ready_url=ready)


def llama_server_binary() -> Path | None:
    try:
        return find_binary()
    except LlamaServerMissing:
        return None


def engine_procs(
    settings: Settings, layout: Layout, env: Mapping[str, str], python: str, facts: Facts, binary: Path | None
) -> list[Proc]:
    """The worker; where llama-server is the engine to run (sidecar.wanted) the worker starts it as its own
    child on LLAMA_SERVER_PORT, sees it die and restarts it (services/worker/sidecar.py), with a key that it
    writes where Prometheus reads it."""
    if not sidecar.wanted(settings, facts, binary=binary):
        return [worker_proc(settings, env, python)]
    worker = worker_proc(
        settings,
        env,
        python,
        engine="llama_server",
        slots=settings.llama_server_parallel,
        spawn_llama_server=True,
        sidecar_key_file=layout.llama_server_key,
    )
    return [worker]


def model_worker_procs(
    name: str, model: str, port: int, settings: Settings, env: Mapping[str, str], python: str, binary: Path | None
) -> list[Proc]:
    """A worker for one more model beside the default's, its own llama-server as its child on `port`; none when
    `model` is empty or the default model, llama-server is missing or the weights are not fetched (`make models`
    puts them in place), so a stack without them still starts."""
    if not model or binary is None:
        return []
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    model_id = catalog.resolve(model)
    path = catalog.path_for(model_id, "llama_server", settings.models_dir)
    if model_id == catalog.default or path is None or not path.exists():
        return []
    argv = [
        python, "-m", "services.worker",
        "--engine", "llama_server",
        "--model", model_id,
        "--slots", str(settings.llama_server_parallel),
        "--metrics-port", "0",
        "--spawn-llama-server",
    ]  # fmt: skip
    env = {**env, "LLAMA_SERVER_PORT": str(port)}
    return [Proc(name, _waiting_for_redis(python, _respawned(python, name, argv)), env)]


def embedder_procs(settings: Settings, env: Mapping[str, str], python: str, binary: Path | None) -> list[Proc]:
    """The worker for EMBEDDING_MODEL (/v1/embeddings): llama-server --embeddings on EMBEDDING_SERVER_PORT."""
    port = settings.embedding_server_port
    return model_worker_procs("embedder", settings.embedding_model, port, settings, env, python, binary)


def chat_procs(settings: Settings, env: Mapping[str, str], python: str, binary: Path | None) -> list[Proc]:
    """The worker for CHAT_MODEL, the instruct model that chats naming an OpenAI model go to
    (services/api/routes/chat_model.py), on CHAT_SERVER_PORT."""
    return model_worker_procs("chat", settings.chat_model, settings.chat_server_port, settings, env, python, binary)


def prepare(
    settings: Settings,
    *,
    worker: bool = True,
    scrape_interval: str = "15s",
    python: str = sys.executable,
    base_env: Mapping[str, str] | None = None,
    facts: Facts | None = None,
    find_llama_server: Callable[[], Path | None] = llama_server_binary,
) -> Stack:
    """Write configs under RUN_DIR and list the processes: redis, API replicas, llama-server (where it is
    the engine), worker, the embedding and chat workers, nginx, prometheus. `facts` describe the machine
    (probed when not given); `find_llama_server` says where llama-server is, or None."""
    layout = Layout(settings.run_dir, settings.log_dir)
    layout.create()
    env = {**(os.environ if base_env is None else base_env), **settings_env(settings)}
    procs: list[Proc] = []
    if redis_conf.is_local(settings):
        secret = redis_conf.password(settings, layout)
        redis_url = redis_conf.url_with_password(settings, secret)
        env |= {"REDIS_URL": redis_url, "REDIS_PASSWORD": secret}
        redis_conf.write_conf(settings, layout, secret)
        if settings.redis_url.startswith("rediss://"):  # the certificate and key are the server's: its clients
            env |= {"REDIS_TLS_CERT_FILE": "", "REDIS_TLS_KEY_FILE": ""}  # verify it with the CA, present none
        procs.append(Proc("redis", (require("redis-server"), str(layout.redis_conf)), without_redis(env)))
    else:  # a Redis elsewhere (another box's stack, a managed one): use it as given
        redis_url = settings.redis_url
    procs += api_procs(settings, layout, env, python)
    if worker:
        facts = facts or Facts.probe(vllm_url=settings.vllm_url, llama_server_url=settings.llama_server_url)
        binary = find_llama_server()
        procs += engine_procs(settings, layout, env, python, facts, binary)
        procs += embedder_procs(settings, env, python, binary)
        procs += chat_procs(settings, env, python, binary)
    nginx_conf.write_native(settings, layout)
    listen_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    public_url = f"http://{listen_host}:{settings.port}"
    procs.append(
        Proc(
            "nginx",
            tuple(nginx_conf.command(require("nginx"), layout)),
            without_redis(env),
            f"{public_url}/nginx/health",
        )
    )
    found = exporters.native(settings, env, redis_url)  # Redis's and nginx's, where installed
    procs += [Proc(e.name, e.argv, e.env, e.ready_url) for e in found]
    sidecar_runs = any("--spawn-llama-server" in p.argv for p in procs)
    jobs = [e.scrape_job() for e in found]
    prometheus_conf.write_native(
        settings, layout, scrape_interval=scrape_interval, llama_server=sidecar_runs, extra=jobs
    )
    prometheus_url = f"http://127.0.0.1:{settings.prometheus_port}"
    argv = prometheus_conf.command(require("prometheus"), settings, layout)
    procs.append(Proc("prometheus", tuple(argv), without_redis(env), f"{prometheus_url}/-/ready"))
    return Stack(tuple(procs), layout, redis_url, public_url, prometheus_url)
