"""One worker process: loads its engine once per model, runs slot threads, heartbeats, obeys commands.

With `on_demand` it also loads the models requests wait for (services/worker/demand.py) within its memory
budget (services/worker/budget.py), making room by unloading the models used longest ago once their requests in
flight are done, and unloads a model idle past its keep_alive. With `spawner` each model gets a llama-server of
its own (services/worker/llama_servers.py).
"""

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

from services.common import commands, durations, keys
from services.common.catalog import Catalog
from services.common.registry import LoadedModel, Registry, WorkerRecord, default_worker_id
from services.common.settings import Settings
from services.common.supervisor import History, State
from services.common.tracing import Tracing
from services.worker import budget
from services.worker.demand import Demand
from services.worker.engines.base import Engine, EngineUnavailable
from services.worker.engines.factory import build_engine, model_path, sidecar_url
from services.worker.engines.profiles import PROFILES
from services.worker.flusher import DeltaFlusher
from services.worker.llama_servers import LlamaServers
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
    cost: budget.Cost | None = None
    """What it takes of the memory budget; None where its engine runs elsewhere (a sidecar at a URL)."""
    pinned: bool = False
    """Loaded at start (--model): kept until unloaded unless its keep_alive says otherwise."""
    load_s: float = 0.0
    process: EngineProcess | None = None
    """Its own llama-server (spawn mode)."""


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
        on_demand: bool = False,
        memory_budget: int | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.catalog = catalog
        self.engine_order = engines
        self.on_demand = on_demand
        self.servable = Servable(catalog, engines, settings.models_dir, any_model=on_demand)
        self.memory_budget = budget.parse_budget(settings.memory_budget) if memory_budget is None else memory_budget
        self.default_keep_alive = durations.seconds(settings.keep_alive)
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
        self.sidecar_wait = 120.0
        self.spawner: LlamaServers | None = None
        """Spawn mode: a llama-server per loaded model, started and stopped with it (set before start())."""

    # -- the engine process ---------------------------------------------------------------------
    def engine_down(self, reason: str) -> None:
        """The sidecar died: publish at once that its models are gone, so the API stops routing here."""
        log.warning("%s out of the registry until the engine serves again", ", ".join(self.served) or "no model")
        self._beat()

    def engine_up(self) -> None:
        self._beat()

    def _processes(self) -> list[EngineProcess]:
        """The engine processes behind this worker's models: its own llama-servers, or the one it watches."""
        own = [s.process for s in dict(self.served).values() if s.process is not None]
        return own + ([self.sidecar] if self.sidecar is not None else [])

    def _serves(self, served: Served) -> bool:
        if self.sidecar is not None and self.sidecar.state != State.SERVING:
            return False
        return served.process is None or served.process.state == State.SERVING

    def _state(self) -> str:
        if self._draining:
            return "draining"
        down = [p for p in self._processes() if p.state != State.SERVING]
        if down:
            return down[0].state.value
        if self.history.recent_deaths >= self.loop_after:
            return State.CRASH_LOOP.value
        return State.SERVING.value

    # -- models ---------------------------------------------------------------------------------
    def load(self, model_id: str, *, pinned: bool = False) -> None:
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
            cost = self._cost(model_id)
            self._make_room(model_id, cost)
            started = time.monotonic()
            engine, process = self._load_engine(model_id, cost)
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
            self.served[model_id] = Served(engine, slots, cost, pinned, time.monotonic() - started, process)
        self._beat()

    def _cost(self, model_id: str) -> budget.Cost | None:
        """What the model will take here, at the context the budget allows; None when its engine runs
        elsewhere. Refused when it cannot fit even alone."""
        engine = self._engine_for(model_id)
        local = engine in ("llama_cpp", "mlx") or (engine == "llama_server" and self.spawner is not None)
        if not local:  # a sidecar at a URL (its memory is its own) or an engine with no weights (bench's instant)
            return None
        path = model_path(self.catalog, model_id, engine, self.settings.models_dir)
        spec = self.catalog.models[model_id]
        trained = budget.trained_context(path) or spec.context_length
        wanted = min(spec.context or trained, trained)
        slots = self.settings.llama_server_parallel if engine == "llama_server" else self.slot_count
        try:
            return budget.cost(path, slots=slots, wanted=wanted, cap=self.settings.n_ctx, budget=self.memory_budget)
        except budget.DoesNotFit as exc:
            raise Refused(f"{model_id} does not fit this worker's memory budget: {exc}") from None

    def _engine_for(self, model_id: str) -> str:
        for name in self.engine_order:
            if self.servable.engine_reason(name, model_id) is None:
                return name
        return self.engine_order[0] if self.engine_order else "none"

    def _make_room(self, model_id: str, cost: budget.Cost | None) -> None:
        """Unload the models used longest ago until `cost` fits the budget and the model count allows one more;
        a model is unloaded only after its requests in flight end (Slots.stop drains them). Only an on-demand
        worker makes room: on another, a load that does not fit is refused with what to unload."""
        while True:
            used = sum(s.cost.total for s in self.served.values() if s.cost)
            over_budget = cost is not None and used + cost.total > self.memory_budget
            too_many = len(self.served) >= self.settings.max_concurrent_models
            if not (over_budget or too_many):
                return
            why = (
                f"its models take {used / 2**20:.0f} MiB of a {self.memory_budget / 2**20:.0f} MiB budget and "
                f"{model_id} needs {cost.total / 2**20:.0f} MiB"
                if over_budget and cost
                else f"it serves {', '.join(self.served)}, MAX_CONCURRENT_MODELS={self.settings.max_concurrent_models}"
            )
            if not self.on_demand or not self.served:
                raise Refused(f"worker {self.id}: {why}: unload one first")
            victim = min(self.served, key=lambda m: (self.served[m].slots.busy > 0, self.served[m].slots.last_used))
            log.info("unloading %s to make room for %s (%s)", victim, model_id, why)
            self._unload_locked(victim)

    def _load_engine(self, model_id: str, cost: budget.Cost | None) -> tuple[Engine, EngineProcess | None]:
        problems = []
        for name in self.engine_order:
            process = None
            try:
                upstream_url, settings = self.upstream_url, self.settings
                if name == "llama_server" and self.spawner is not None:
                    cmd = self.spawner.start(model_id, context=cost.context if cost else 0, wait=self.sidecar_wait)
                    process = self.spawner.process(model_id)
                    upstream_url = cmd.url
                    settings = settings.model_copy(update={"llama_server_api_key": cmd.api_key})
                engine = self.engine_factory(
                    name,
                    model_id,
                    catalog=self.catalog,
                    settings=settings,
                    slots=self.slot_count,
                    upstream_url=upstream_url,
                    context=cost.context if cost else None,
                )
                started = time.monotonic()
                engine.load()
            except (EngineUnavailable, ImportError, OSError, ValueError, RuntimeError) as exc:
                if process is not None and self.spawner is not None:
                    self.spawner.stop(model_id)
                problems.append(f"{name}: {exc}")
                log.warning("engine %s cannot serve %s (%s); trying the next one", name, model_id, exc)
                continue
            log.info(
                "serving %s with %s (%d slots, %s tokens of context), loaded in %.1fs",
                model_id,
                name,
                engine.capacity(),
                cost.context if cost else "its server's",
                time.monotonic() - started,
            )
            self.engine_name = self.metrics.engine = name
            return engine, process
        raise EngineUnavailable(f"no engine could load {model_id}: " + "; ".join(problems))

    def unload(self, model_id: str) -> None:
        model_id = self.catalog.resolve(model_id)
        with self._lock:
            self._unload_locked(model_id)

    def _unload_locked(self, model_id: str) -> None:
        served = self.served.get(model_id)
        if served is None:
            return
        served.slots.release(self.settings.request_timeout)  # still advertised until its requests in flight end
        self.served.pop(model_id, None)
        self._beat()
        served.engine.unload()
        if self.spawner is not None:
            self.spawner.stop(model_id)
        log.info("unloaded %s", model_id)

    # -- keep_alive -----------------------------------------------------------------------------
    def keep_alive(self, model_id: str, served: Served) -> float:
        """Seconds the model stays loaded once idle: the last request's, else the catalog's, else KEEP_ALIVE
        (forever for a model the worker was started with). Forever on a worker that does not load on request:
        nothing would load the model again, and one request's keep_alive would take it from everyone."""
        if not self.on_demand:
            return durations.FOREVER
        if served.slots.keep_alive is not None:
            return durations.FOREVER if served.slots.keep_alive < 0 else served.slots.keep_alive
        spec = self.catalog.models.get(model_id)
        if spec is not None and spec.keep_alive is not None:
            return durations.seconds(spec.keep_alive)
        return durations.FOREVER if served.pinned else self.default_keep_alive

    def expire(self) -> list[str]:
        """Unload every model idle past its keep_alive whose queue is empty; the ids unloaded."""
        now = time.monotonic()
        idle = [
            m
            for m, s in dict(self.served).items()
            if not s.slots.busy and now - s.slots.last_used >= self.keep_alive(m, s)
        ]
        gone = []
        for model_id in idle:
            try:
                if self.redis.llen(keys.queue_key(model_id)):
                    continue  # a request waits for it: it is not idle
            except redis.RedisError:
                continue
            with self._lock:
                served = self.served.get(model_id)
                if (
                    served is None
                    or served.slots.busy
                    or time.monotonic() - served.slots.last_used < self.keep_alive(model_id, served)
                ):
                    continue
                log.info("unloading %s: idle past its keep_alive", model_id)
                self._unload_locked(model_id)
                gone.append(model_id)
        return gone

    def _models_loop(self) -> None:
        while not self._halt.wait(1.0):
            if not self._draining:
                self.expire()

    # -- lifecycle ------------------------------------------------------------------------------
    def record(self) -> WorkerRecord:
        served = dict(self.served)
        processes = self._processes()
        exits = [p.last_exit for p in processes if p.last_exit]
        now = time.monotonic()
        return WorkerRecord(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            engine=self.engine_name,
            device=self.device,
            models=tuple(m for m, s in served.items() if self._serves(s)),
            started_at=self.started_at,
            slots=sum(s.engine.capacity() for s in served.values()),
            busy=sum(s.slots.busy for s in served.values()),
            metrics_port=self.metrics_port,
            draining=self._draining,
            state=self._state(),
            restarts=self.history.restarts + sum(p.restarts for p in processes),
            last_exit=exits[0] if exits else self.history.last_exit,
            engine_pid=next((p.pid for p in processes if p.pid), None),
            can_serve=self.servable.models(),
            on_demand=self.on_demand,
            memory_budget=self.memory_budget,
            memory_used=sum(s.cost.total for s in served.values() if s.cost),
            loaded={
                m: LoadedModel(
                    context=s.cost.context if s.cost else s.engine.context_length() or 0,
                    bytes=s.cost.total if s.cost else 0,
                    keep_alive=-1 if (k := self.keep_alive(m, s)) == durations.FOREVER else k,
                    idle_s=0.0 if s.slots.busy else round(now - s.slots.last_used, 1),
                    loaded_s=round(s.load_s, 2),
                )
                for m, s in served.items()
            },
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
        self.sidecar_wait = sidecar_wait
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
            self.load(model, pinned=True)
        self._watch_upstream()
        for target in (self._heartbeat_loop, self._control_loop, self._models_loop):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()
        if self.on_demand:
            demand = Demand(
                self.redis,
                self.registry,
                worker_id=self.id,
                candidates=lambda: [m for m in self.servable.models() if m not in self.served],
                load=self.load,
                stop=self._stop,
            )
            threading.Thread(target=demand.run, name="demand", daemon=True).start()

    def _watch_upstream(self) -> None:
        """A sidecar at a URL (compose's llama-server, vLLM) restarts on its own; we only follow it."""
        if self.sidecar is not None or self.spawner is not None or self.engine_name not in PROFILES:
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
        if self.spawner is not None:
            self.spawner.stop_all()
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
