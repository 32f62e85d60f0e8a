"""Authentication before admission: who is calling (`Authorization: Bearer`), and may they call this route.

With no keys file configured (API_KEYS_FILE empty) this middleware is not installed and nothing changes.
With one, every `/v1` route needs a valid, unexpired key (401 `invalid_api_key`, as OpenAI answers), and
the admin routes (load, unload, system status, usage, metrics) need an admin key, unless the request reached this
process directly from loopback: nginx always connects from loopback in the native stack, so a request that
came through it (it sets X-Real-IP and X-Forwarded-For) never counts as local, whatever its client sent.
The key's record is left on `req.context.api_key` and its name on `req.context.key_name` for limits and usage.
"""

from __future__ import annotations

import ipaddress

import falcon

from services.common.catalog import Catalog
from services.common.errors import AuthenticationFailed, ModelNotFound, PermissionDenied
from services.keys.ring import KeyRing
from services.keys.store import ApiKey

ADMIN_ROUTES = frozenset({"/v1/models/load", "/v1/models/unload", "/v1/system/status", "/v1/usage", "/metrics"})
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer(req: falcon.Request) -> str | None:
    header = req.get_header("Authorization") or ""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def direct_from_loopback(req: falcon.Request) -> bool:
    """Connected from this host and not relayed by a proxy (nginx sets X-Real-IP on every request it passes)."""
    if any(req.get_header(h) for h in FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(req.env.get("REMOTE_ADDR") or "").is_loopback
    except ValueError:
        return False


class AuthMiddleware:
    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def _authenticate(self, token: str | None) -> ApiKey:
        if token is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY`.", headers=dict(CHALLENGE)
            )
        record = self.ring.find(token)
        if record is None or record.expired():
            # one message for unknown, revoked and expired keys: a caller learns nothing about which
            raise AuthenticationFailed("Incorrect or expired API key provided.", headers=dict(CHALLENGE))
        return record

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.api_key = None
        req.context.key_name = None
        if req.method == "OPTIONS":
            return  # a CORS preflight carries no key; Falcon's OPTIONS responder only lists the methods
        admin_route = req.path.rstrip("/") in ADMIN_ROUTES
        if not (admin_route or req.path.startswith("/v1")):
            return  # /health, /status (its page fetches /v1/system/status, which is checked)
        token = bearer(req)
        if admin_route and token is None and direct_from_loopback(req):
            return  # a local scraper or operator on the replica's own port
        record = self._authenticate(token)
        req.context.api_key = record
        req.context.key_name = record.name
        if admin_route and not record.admin and not direct_from_loopback(req):
            raise PermissionDenied(f"This route needs an admin key; the key '{record.name}' is not one.")


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
