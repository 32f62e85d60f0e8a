"""Loading models that requests wait for: a worker started with `--on-demand` watches the queues of the catalog
models it could load and no live worker serves, and loads one as soon as a request waits in its queue.

The request itself only waits in the model's RQ queue, as any queued request does (position comments,
`x-queue-wait-ms`): the API lets it wait MODEL_LOAD_WAIT_S when some live on-demand worker lists the model in
`can_serve` (services/api/pipeline/gateway.py). Of several such workers one loads it: the one that takes the model's
`loading` key first (SET NX, renewed while the load runs). A load that fails leaves its reason under
`load_failed` for a short while, where the waiting requests read it and end at once.

Polling (a pipeline of LLENs every POLL_S) instead of a notification keeps this independent of which API
replica took the request, and of replicas at all: a job pushed on the queue by anyone (RQ's own tools, a retry
after a worker died) wakes a load the same way.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable

import redis

from services.common import keys
from services.common.registry import Registry
from services.worker.servable import Refused

log = logging.getLogger(__name__)

POLL_S = 0.25
"""How often queues are looked at: at most this much is added to the time to first token of a cold model."""
CLAIM_TTL_S = 30
"""Seconds the loading key lives without renewal: a worker killed while loading frees the model this fast."""
FAILED_TTL_S = 15


class Demand:
    def __init__(
        self,
        client: redis.Redis,
        registry: Registry,
        *,
        worker_id: str,
        candidates: Callable[[], Iterable[str]],
        load: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        self.redis = client
        self.registry = registry
        self.worker_id = worker_id
        self.candidates = candidates
        """Catalog ids this worker could load and does not hold now."""
        self.load = load
        self.stop = stop

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            try:
                self.once()
            except redis.RedisError as exc:
                log.warning("on-demand loading: %s", exc)
                self.stop.wait(1.0)

    def once(self) -> str | None:
        """Load the first waited-for model nobody serves; its id, or None when there is none."""
        models = list(self.candidates())
        if not models:
            return None
        pipe = self.redis.pipeline(transaction=False)
        for model in models:
            pipe.llen(keys.queue_key(model))
        waiting = [m for m, n in zip(models, pipe.execute(), strict=True) if n]
        if not waiting:
            return None
        served = self.registry.serving()
        pipe = self.redis.pipeline(transaction=False)
        for model in waiting:
            pipe.exists(keys.load_failed(model))
        failed = {m for m, gone in zip(waiting, pipe.execute(), strict=True) if gone}
        for model in waiting:
            if model in served or model in failed:  # a failed load is tried again after FAILED_TTL_S, not at once
                continue
            if not self.redis.set(keys.loading(model), self.worker_id, nx=True, ex=CLAIM_TTL_S):
                continue
            self._load(model)
            return model
        return None

    def _load(self, model: str) -> None:
        claim = keys.loading(model)
        renew = threading.Event()
        threading.Thread(target=self._renew, args=(claim, renew), name=f"claim-{model}", daemon=True).start()
        log.info("loading %s: requests wait for it", model)
        try:
            self.load(model)
        except Refused as exc:  # said for clients: what stops it (the budget's figures), no path or address
            log.error("could not load %s on request: %s", model, exc)
            self.redis.set(keys.load_failed(model), str(exc)[:500], ex=FAILED_TTL_S)
        except Exception as exc:
            log.error("could not load %s on request: %s", model, exc)
            self.redis.set(keys.load_failed(model), "its engine could not load it (the worker's log says why)",
                           ex=FAILED_TTL_S)  # fmt: skip
        finally:
            renew.set()
            self.redis.delete(claim)

    def _renew(self, claim: str, done: threading.Event) -> None:
        while not done.wait(CLAIM_TTL_S / 3):
            with contextlib.suppress(redis.RedisError):
                self.redis.expire(claim, CLAIM_TTL_S)
