"""/health, /v1/system/status and the model load/unload commands sent to workers over Redis."""

from __future__ import annotations

import time

import falcon
import redis

from services.api.observability.queue_view import waiting
from services.api.observability.traffic import RecentTraffic
from services.api.pipeline.admission import Admission
from services.api.pipeline.body import read_json_body
from services.api.pipeline.gateway import Gateway
from services.common import commands
from services.common.catalog import Catalog
from services.common.commands import ModelCommandConflict
from services.common.errors import InternalError, InvalidRequest, ServiceUnavailable
from services.common.registry import WorkerRecord
from services.common.schemas import ModelCommand, parse
from services.common.settings import Settings

VERSION = "0.1.0"


class HealthResource:
    """200 while the API and Redis answer; 503 with Retry-After when Redis does not."""

    def __init__(self, client: redis.Redis, gateway: Gateway) -> None:
        self.redis = client
        self.gateway = gateway

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        try:
            self.redis.ping()
            serving = self.gateway.serving(fresh=True)
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"Redis is unavailable: {type(exc).__name__}") from None
        resp.media = {
            "status": "ok",
            "redis": {"up": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)},
            "models": sorted(serving),
            "workers": len({w.id for ws in serving.values() for w in ws}),
            "version": VERSION,
        }


class StatusResource:
    """The fleet as the registry and queues show it now, and the recent traffic; read by the /status page."""

    def __init__(
        self, settings: Settings, catalog: Catalog, gateway: Gateway, admission: Admission, traffic: RecentTraffic
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.gateway = gateway
        self.admission = admission
        self.traffic = traffic

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        workers = self.gateway.registry.live()
        models = {}
        queued_by_key: dict[str, int] = {}
        for model_id in sorted({m for w in workers for m in w.models} | {self.catalog.default}):
            serving = [w for w in workers if model_id in w.models]
            queue = waiting(self.gateway.redis, model_id)
            models[model_id] = {
                "workers": len(serving),
                "slots": sum(w.slots for w in serving),
                "busy": sum(w.busy for w in serving),
                "queued": queue.queued,
                "queued_by_key": queue.by_key,
                "oldest_wait_s": queue.oldest_wait_s,
            }
            for name, count in queue.by_key.items():
                queued_by_key[name] = queued_by_key.get(name, 0) + count
        resp.media = {
            "object": "system.status",
            "version": VERSION,
            "default_model": self.catalog.default,
            "inflight": self.admission.inflight(),
            "limits": {
                "max_concurrent_requests": self.settings.max_concurrent_requests,
                "max_queue_depth": self.settings.max_queue_depth,
                "request_timeout": self.settings.request_timeout,
                "default_max_tokens": self.settings.default_max_tokens,
                "max_concurrent_models": self.settings.max_concurrent_models,
            },
            "models": models,
            "queued_by_key": dict(sorted(queued_by_key.items())),
            "workers": [w.model_dump() | {"free_slots": w.free_slots} for w in workers],
            "traffic": self.traffic.summary(),
        }


class ModelCommandResource:
    """Load or unload a model on the workers that can, and answer with what they did.

    A load goes only to a live worker whose engine can serve the model (WorkerRecord.can_serve: a sidecar
    serves the one model it was started with); it is a no-op where a worker already serves it. An unload
    goes to the workers serving it. The answer waits up to `wait` seconds for every worker asked: 200 with
    the outcome, 409 when the fleet's state forbids it (no worker can serve the model, none has room, the
    worker refused), 500 when a worker's engine failed; 202 with the command's id when some worker is still
    at it (the outcome then shows in /v1/models and in the worker's log under that id).
    """

    def __init__(self, op: str, settings: Settings, catalog: Catalog, gateway: Gateway) -> None:
        self.op: commands.Op = "load" if op == "load" else "unload"
        self.settings = settings
        self.catalog = catalog
        self.gateway = gateway

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        cmd = parse(ModelCommand, read_json_body(req, self.settings.max_request_bytes))
        model_id = self.catalog.resolve(cmd.model)
        workers = self.gateway.registry.live()
        if cmd.worker:
            workers = [w for w in workers if w.id == cmd.worker]
            if not workers:
                raise InvalidRequest(f"No live worker is named '{cmd.worker[:200]}'.", param="worker")
        elif not workers:
            raise ServiceUnavailable("No worker is running (see /v1/system/status).")
        if self.op == "load":
            targets, already = self._load_targets(model_id, workers, named=bool(cmd.worker))
        else:
            targets, already = [w for w in workers if model_id in w.models and not w.draining], []  # leaving anyway
        if not targets:
            resp.media = self._answer(model_id, "", [w.id for w in already], [])
            return
        command = commands.Command(id=commands.new_id(), op=self.op, model=model_id)
        for worker in targets:
            commands.send(self.gateway.redis, worker.id, command)
        results = commands.collect(self.gateway.redis, command.id, len(targets), cmd.wait)
        for result in results:
            self._raise_for(result)
        answered = {r.worker for r in results}
        pending = [w.id for w in targets if w.id not in answered]
        resp.media = self._answer(model_id, command.id, [w.id for w in targets], pending)
        if pending:
            resp.status = falcon.HTTP_202

    def _load_targets(
        self, model_id: str, workers: list[WorkerRecord], *, named: bool
    ) -> tuple[list[WorkerRecord], list[WorkerRecord]]:
        """(the worker to send the load to, the workers that already serve it): one or the other is empty."""
        serving = [w for w in workers if model_id in w.models]
        if serving:
            return [], serving
        able = [w for w in workers if model_id in w.can_serve]
        if not able:
            if named:
                (worker,) = workers
                serves = ", ".join(worker.can_serve) or "no model"
                raise ModelCommandConflict(
                    f"Worker '{worker.id}' ({worker.engine}) cannot serve '{model_id}': it can serve {serves}.",
                    param="worker",
                    code="model_not_servable",
                )
            engines = ", ".join(sorted({w.engine for w in workers}))
            raise ModelCommandConflict(
                f"No live worker can serve '{model_id}': their engines ({engines}) do not hold it "
                "(see can_serve in /v1/system/status).",
                param="model",
                code="model_not_servable",
            )
        room = [
            w for w in able if not w.draining and (w.on_demand or len(w.models) < self.settings.max_concurrent_models)
        ]  # an on-demand worker makes room itself: it unloads the model used longest ago (services/worker/process.py)
        if not room:
            raise ModelCommandConflict(
                f"Every worker that can serve '{model_id}' is draining or already serves "
                f"MAX_CONCURRENT_MODELS={self.settings.max_concurrent_models} models: unload one first.",
                code="no_room",
            )
        return sorted(room, key=lambda w: (len(w.models), w.busy))[:1], []

    def _raise_for(self, result: commands.Result) -> None:
        said = f"Worker '{result.worker}' could not {result.op} '{result.model}': {result.message}"
        if result.outcome == "refused":
            raise ModelCommandConflict(said, code="refused")
        if result.outcome == "failed":
            raise InternalError(said, code=f"model_{result.op}_failed")

    def _answer(self, model_id: str, command_id: str, workers: list[str], pending: list[str]) -> dict:
        done = "loaded" if self.op == "load" else "unloaded"
        body = {
            "object": f"model.{self.op}",
            "id": command_id or None,
            "model": model_id,
            "status": "pending" if pending else done,
            "workers": workers,
        }
        if pending:
            body["pending"] = pending
            body["message"] = f"Still at it on {', '.join(pending)}: watch /v1/models."
        return body
