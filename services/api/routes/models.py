"""GET /v1/models and /v1/models/{id}: what live workers serve, or would load for a request (an on-demand
worker's can_serve), read from the heartbeat registry. A model added with `python -m services.models add` is
listed as soon as such a worker sees it, so a client's model picker (Open WebUI reads /v1/models) offers it."""

from __future__ import annotations

import falcon

from services.api.limits import key_limits
from services.api.pipeline.gateway import Gateway
from services.common.catalog import Catalog
from services.common.errors import ServiceUnavailable


class ModelsResource:
    def __init__(self, catalog: Catalog, gateway: Gateway) -> None:
        self.catalog = catalog
        self.gateway = gateway

    def _card(self, model_id: str, workers: list) -> dict:
        created = int(min(w.started_at for w in workers))
        return {"id": model_id, "object": "model", "created": created, "owned_by": "organization-owner"}

    def _offered(self) -> dict[str, list]:
        serving = self.gateway.serving(fresh=True)
        return {**self.gateway.loadable(), **serving}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        offered = self._offered()
        cards = [self._card(m, ws) for m, ws in sorted(offered.items()) if key_limits.may_use(req, m, self.catalog)]
        resp.media = {"object": "list", "data": cards}

    def on_get_one(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        canonical = self.catalog.resolve(model_id)
        key_limits.require_model(req, canonical, self.catalog)
        workers = self._offered().get(canonical)
        if not workers:
            raise ServiceUnavailable(
                f"No worker is serving the model '{canonical}' right now.", param="model", code="model_not_loaded"
            )
        resp.media = self._card(canonical, workers)
