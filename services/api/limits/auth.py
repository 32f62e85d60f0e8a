"""A key's model allowlist: which canonical model ids its caller may use.

Who may call a route at all is decided before this, on the matched route (services/api/limits/access.py), which
leaves the caller's key on `req.context.api_key`.
"""

from __future__ import annotations

import falcon

from services.common.catalog import Catalog
from services.common.errors import ModelNotFound, PermissionDenied
from services.keys.store import ApiKey


def may_use(req: falcon.Request, model_id: str, catalog: Catalog) -> bool:
    """Whether the caller's key allows this canonical model id (its allowlist may name ids or aliases)."""
    record: ApiKey | None = getattr(req.context, "api_key", None)
    if record is None or record.models is None:
        return True
    return any(allowed == model_id or _canonical(catalog, allowed) == model_id for allowed in record.models)


def require_model(req: falcon.Request, model_id: str, catalog: Catalog) -> None:
    """403 `model_not_allowed` for a model outside the key's allowlist (the model exists: 404 came first)."""
    if not may_use(req, model_id, catalog):
        record: ApiKey = req.context.api_key
        raise PermissionDenied(
            f"The key '{record.name}' may not use the model '{model_id}'.", param="model", code="model_not_allowed"
        )


def _canonical(catalog: Catalog, name: str) -> str | None:
    try:
        return catalog.resolve(name)
    except ModelNotFound:
        return None  # an allowlist may name a model the catalog no longer has
