"""GET /v1/models and /v1/models/{id}: what live workers serve, read from the heartbeat registry."""

from __future__ import annotations

import falcon

from services.api import auth, shapes
from services.api.gateway import Gateway
from services.common.catalog import Catalog
from services.common.errors import ServiceUnavailable


class ModelsResource:
    def __init__(self, catalog: Catalog, gateway: Gateway) -> None:
        self.catalog = catalog
        self.gateway = gateway

    def _card(self, model_id: str, workers: list) -> dict:
        created = int(min(w.started_at for w in workers))
        return shapes.model_card(model_id, created)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        serving = self.gateway.serving(fresh=True)
        cards = [self._card(m, ws) for m, ws in sorted(serving.items()) if auth.may_use(req, m, self.catalog)]
        resp.media = {"object": "list", "data": cards}

    def on_get_one(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        canonical = self.catalog.resolve(model_id)
        auth.require_model(req, canonical, self.catalog)
        workers = self.gateway.serving(fresh=True).get(canonical)
        if not workers:
            raise ServiceUnavailable(
                f"No worker is serving the model '{canonical}' right now.", param="model", code="model_not_loaded"
            )
        resp.media = self._card(canonical, workers)
