"""Every limit an API key carries, in one place: what it is, where its value comes from, where it is checked.

| limit       | its value                                   | checked                                           |
|-------------|---------------------------------------------|---------------------------------------------------|
| rpm, tpm    | the key's own, else KEY_DEFAULT_RPM / _TPM  | ratelimit.RateLimiter.charge, before enqueue      |
| concurrency | the key's own, else KEY_DEFAULT_CONCURRENCY | admission's script, atomically with the enqueue   |
| priority    | the key's own (1)                           | admission's fair share: its place in the queue    |
| models      | the key's allowlist (ids or aliases)        | `require_model` / `may_use`, before anything else |

0 means unlimited. Who may call a route at all is decided before any of these, on the matched route
(access.py), which leaves the caller's key on `req.context.api_key`. The limits every request shares
(MAX_CONCURRENT_REQUESTS, MAX_QUEUE_DEPTH, MAX_REQUEST_BYTES, MAX_N) are settings, checked by admission, the
body reader and the routes.
"""

from __future__ import annotations

from dataclasses import dataclass

import falcon

from services.common.catalog import Catalog
from services.common.errors import ModelNotFound, PermissionDenied
from services.common.settings import Settings
from services.keys.store import ApiKey


@dataclass(frozen=True)
class KeyLimits:
    """A key's limits in force (its own, else the defaults); 0 = unlimited."""

    name: str
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0
    priority: int = 1

    @classmethod
    def of(cls, key: ApiKey, settings: Settings | None = None) -> KeyLimits:
        """The key's limits in force; without settings, only its own (no defaults)."""
        return cls(
            name=key.name,
            rpm=key.rpm or (settings.key_default_rpm if settings else 0),
            tpm=key.tpm or (settings.key_default_tpm if settings else 0),
            concurrency=key.concurrency or (settings.key_default_concurrency if settings else 0),
            priority=key.priority,
        )


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
