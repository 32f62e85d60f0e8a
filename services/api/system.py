"""/health, /v1/system/status and the model load/unload commands sent to workers over Redis."""

from __future__ import annotations

import json
import time

import falcon
import redis

from services.api.admission import Admission
from services.api.body import read_json_body
from services.api.gateway import Gateway
from services.api.queue_view import waiting
from services.api.traffic import RecentTraffic
from services.common import keys
from services.common.catalog import Catalog
from services.common.errors import InvalidRequest, ServiceUnavailable
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
    """Ask workers to load or unload a model; answers 202 since loading takes time (watch /v1/models)."""

    def __init__(self, op: str, settings: Settings, catalog: Catalog, gateway: Gateway) -> None:
        self.op = op
        self.settings = settings
        self.catalog = catalog
        self.gateway = gateway

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        cmd = parse(ModelCommand, read_json_body(req, self.settings.max_request_bytes))
        model_id = self.catalog.resolve(cmd.model)
        workers = self.gateway.registry.live()
        if cmd.worker:
            targets = [w for w in workers if w.id == cmd.worker]
            if not targets:
                raise InvalidRequest(f"No live worker is named '{cmd.worker}'.", param="worker")
        elif self.op == "unload":
            targets = [w for w in workers if model_id in w.models]
        else:
            candidates = [
                w for w in workers if model_id not in w.models and len(w.models) < self.settings.max_concurrent_models
            ]
            targets = sorted(candidates, key=lambda w: (len(w.models), w.busy))[:1]
        if not targets:
            raise ServiceUnavailable(f"No worker can {self.op} '{model_id}' now (see /v1/system/status).")
        for worker in targets:
            key = keys.control(worker.id)
            self.gateway.redis.rpush(key, json.dumps({"op": self.op, "model": model_id}))
            self.gateway.redis.expire(key, 300)
        resp.status = falcon.HTTP_202
        resp.media = {
            "object": f"model.{self.op}",
            "model": model_id,
            "status": "accepted",
            "workers": [w.id for w in targets],
        }
