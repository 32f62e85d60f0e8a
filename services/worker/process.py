"""One worker process: loads its engine once per model, runs slot threads, heartbeats, obeys commands."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from prometheus_client import start_http_server

from services.common import commands, keys
from services.common.catalog import Catalog
from services.common.registry import Registry, WorkerRecord, default_worker_id
from services.common.settings import Settings
from services.common.supervisor import History, State
from services.common.tracing import Tracing
from services.worker.engines.base import Engine, EngineUnavailable
from services.worker.engines.factory import build_engine, sidecar_url
from services.worker.flusher import DeltaFlusher
from services.worker.metrics import WorkerMetrics
from services.worker.runner import JobRunner
from services.worker.servable import Refused, Servable
from services.worker.sidecar import EngineProcess, UpstreamWatch
from services.worker.slots import Slots

log = logging.getLogger(__name__)

EngineFactory = Callable[..., Engine]
"""(engine name, model id, *, catalog, settings, slots, upstream_url) -> unloaded Engine"""


@dataclass
class Served:
    engine: Engine
    slots: Slots


class WorkerProcess:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        catalog: Catalog,
        *,
        engines: tuple[str, ...],
        device: str,
        slots: int,
        worker_id: str | None = None,
        upstream_url: str | None = None,
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
        engine_factory: EngineFactory = build_engine,
        history: History | None = None,
        loop_after: int = 3,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.catalog = catalog
        self.engine_order = engines
        self.servable = Servable(catalog, engines, settings.models_dir)
        self.device = device
        self.slot_count = slots
        self.id = worker_id or default_worker_id(socket.gethostname(), os.getpid())
        self.upstream_url = upstream_url
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.registry = Registry(client, settings.heartbeat_ttl)
        self.engine_factory = engine_factory
        self.engine_name = engines[0] if engines else "none"
        self.metrics = WorkerMetrics(self.engine_name, worker=self.id)
        self.served: dict[str, Served] = {}
        self.started_at = time.time()
        self._stop = threading.Event()  # asked to stop (signal): the main thread starts the drain
        self._halt = threading.Event()  # drain over: heartbeat and control loops end
        self._draining = False
        self._lock = threading.Lock()
        self.history = history or History()
        self.loop_after = loop_after
        self.flusher = DeltaFlusher(client, interval=settings.stream_flush_ms / 1000)
        self.traces = Tracing.from_settings(settings, "inference-worker")
        """One pipeline per flush for every slot of every model this process serves."""
        self.sidecar: EngineProcess | None = None
        """The process behind the engine: a llama-server this worker runs and restarts (set before start()),
        or a sidecar someone else runs, watched after start() (services/worker/sidecar.py)."""

    # -- the engine process ---------------------------------------------------------------------
    def engine_down(self, reason: str) -> None:
        """The sidecar died: publish at once that its models are gone, so the API stops routing here."""
        log.warning("%s out of the registry until the engine serves again", ", ".join(self.served) or "no model")
        self._beat()

    def engine_up(self) -> None:
        self._beat()

    def _engine_serving(self) -> bool:
        return self.sidecar is None or self.sidecar.state == State.SERVING

    def _state(self) -> str:
        if self._draining:
            return "draining"
        if self.sidecar is not None and self.sidecar.state != State.SERVING:
            return self.sidecar.state.value
        if self.history.recent_deaths >= self.loop_after:
            return State.CRASH_LOOP.value
        return State.SERVING.value

    # -- models ---------------------------------------------------------------------------------
    def load(self, model_id: str) -> None:
        """Load `model_id` with the first engine that can, logging why each earlier one could not; Refused
        (before any engine is touched) when none of this worker's engines holds it, or it has no room."""
        model_id = self.catalog.resolve(model_id)
        with self._lock:
            if model_id in self.served:
                return
            if self._draining:
                raise Refused(f"worker {self.id} is draining")
            why = self.servable.reason(model_id)
            if why:
                raise Refused(f"worker {self.id} cannot serve {model_id}: {why}")
            if len(self.served) >= self.settings.max_concurrent_models:
                raise Refused(
                    f"worker {self.id} serves {', '.join(self.served)} and MAX_CONCURRENT_MODELS="
                    f"{self.settings.max_concurrent_models}: unload one first"
                )
            engine = self._load_engine(model_id)
            runner = JobRunner(
                engine,
                self.redis,
                worker_id=self.id,
                stream_ttl=self.settings.stream_ttl,
                metrics=self.metrics,
                flusher=self.flusher,
                traces=self.traces,
            )
            slots = Slots(self.redis, model_id, runner, count=engine.capacity(), worker_id=self.id)
            slots.start()
            self.served[model_id] = Served(engine, slots)
        self._beat()

    def _load_engine(self, model_id: str) -> Engine:
        problems = []
        for name in self.engine_order:
            try:
                engine = self.engine_factory(
                    name,
                    model_id,
                    catalog=self.catalog,
                    settings=self.settings,
                    slots=self.slot_count,
                    upstream_url=self.upstream_url,
                )
                started = time.monotonic()
                engine.load()
            except (EngineUnavailable, ImportError, OSError, ValueError, RuntimeError) as exc:
                problems.append(f"{name}: {exc}")
                log.warning("engine %s cannot serve %s (%s); trying the next one", name, model_id, exc)
                continue
            log.info(
                "serving %s with %s (%d slots), loaded in %.1fs",
                model_id,
                name,
                engine.capacity(),
                time.monotonic() - started,
            )
            self.engine_name = self.metrics.engine = name
            return engine
        raise EngineUnavailable(f"no engine could load {model_id}: " + "; ".join(problems))

    def unload(self, model_id: str) -> None:
        model_id = self.catalog.resolve(model_id)
        with self._lock:
            served = self.served.pop(model_id, None)
        if served is None:
            return
        self._beat()
        served.slots.stop(self.settings.request_timeout)
        served.engine.unload()
        log.info("unloaded %s", model_id)

    # -- lifecycle ------------------------------------------------------------------------------
    def record(self) -> WorkerRecord:
        served = dict(self.served)
        sidecar = self.sidecar
        return WorkerRecord(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            engine=self.engine_name,
            device=self.device,
            models=tuple(served) if self._engine_serving() else (),
            started_at=self.started_at,
            slots=sum(s.engine.capacity() for s in served.values()),
            busy=sum(s.slots.busy for s in served.values()),
            metrics_port=self.metrics_port,
            draining=self._draining,
            state=self._state(),
            restarts=self.history.restarts + (sidecar.restarts if sidecar else 0),
            last_exit=(sidecar.last_exit if sidecar and sidecar.last_exit else self.history.last_exit),
            engine_pid=sidecar.pid if sidecar else None,
            can_serve=self.servable.models(),
        )

    def _beat(self) -> None:
        if self._halt.is_set():
            return  # a stopped worker must not re-enter the registry it just left
        try:
            self.registry.beat(self.record())
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _heartbeat_loop(self) -> None:
        while not self._halt.wait(self.settings.heartbeat_interval):
            self._beat()

    def _control_loop(self) -> None:
        """Commands from /v1/models/load and /unload, one list per worker."""
        key = keys.control(self.id)
        while not self._stop.is_set() and not self._halt.is_set():
            try:
                item = self.redis.blpop([key], timeout=1)
            except redis.RedisError as exc:
                log.warning("control channel: %s", exc)
                self._halt.wait(1)
                continue
            if item is None:
                continue
            command = commands.parse(item[1])
            if command is None:
                log.error("unreadable command %r", item[1][:200])
                continue
            result = self.obey(command)
            try:
                commands.reply(self.redis, result)
            except redis.RedisError as exc:
                log.warning("could not answer command %s: %s", command.id, exc)

    def obey(self, command: commands.Command) -> commands.Result:
        """Run one load or unload and say how it went: refused (nothing was touched) or failed (the engine
        could not load it) carry the reason, which the admin who asked reads in the API's answer."""
        started = time.monotonic()
        op = self.load if command.op == "load" else self.unload
        outcome: commands.Outcome = "loaded" if command.op == "load" else "unloaded"
        message = ""
        try:
            op(command.model)
        except Refused as exc:
            outcome, message = "refused", str(exc)
        except Exception as exc:
            outcome, message = "failed", f"{type(exc).__name__}: {exc}"
        level = logging.INFO if outcome in ("loaded", "unloaded") else logging.ERROR
        log.log(level, "command %s %s %s: %s %s", command.id, command.op, command.model, outcome, message)
        return commands.Result(
            id=command.id,
            worker=self.id,
            op=command.op,
            model=command.model,
            outcome=outcome,
            message=message,
            seconds=round(time.monotonic() - started, 3),
        )

    def start(self, models: list[str], *, sidecar_wait: float = 120.0) -> None:
        self.servable.pin(models)
        if self.metrics_port:
            start_http_server(self.metrics_port, addr=self.metrics_host, registry=self.metrics.registry)
        if self.sidecar is not None:
            self.sidecar.start()
            if not self.sidecar.wait_ready(sidecar_wait):
                raise EngineUnavailable(
                    f"{self.sidecar.name} did not serve within {sidecar_wait:.0f} s"
                    + (f" (it {self.sidecar.last_exit})" if self.sidecar.last_exit else "")
                    + "; see its log"
                )
        for model in models:
            self.load(model)
        self._watch_upstream()
        for target in (self._heartbeat_loop, self._control_loop):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()

    def _watch_upstream(self) -> None:
        """A sidecar at a URL (compose's llama-server, vLLM) restarts on its own; we only follow it."""
        if self.sidecar is not None or self.engine_name not in ("llama_server", "vllm"):
            return
        url = sidecar_url(self.engine_name, self.settings, self.upstream_url)
        if url:
            self.sidecar = UpstreamWatch(self.engine_name, url, on_up=self.engine_up, on_down=self.engine_down)
            self.sidecar.start()

    def stop(self) -> None:
        """Graceful drain: stay in the registry marked draining, with the models and busy slots it still
        has (no new work is routed here; jobs in flight still count as alive), finish those jobs in
        every model at once, then unload and leave."""
        self._stop.set()
        self._draining = True
        self._beat()
        served = list(self.served.values())
        for s in served:
            s.slots.close()
        for s in served:
            s.slots.wait(self.settings.request_timeout)
        self.flusher.close()
        with self._lock:
            self.served.clear()
        for s in served:
            s.engine.unload()
        if self.sidecar is not None:
            self.sidecar.stop()
        self._halt.set()
        self._leave()

    def _leave(self) -> None:
        try:
            self.registry.remove(self.id)
        except redis.RedisError as exc:
            log.warning("could not leave the registry: %s", exc)

    def wait(self) -> None:
        self._stop.wait()
