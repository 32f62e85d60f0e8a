"""Who may call which route, declared where the route is added and decided on the route Falcon matched.

The check used to read the raw path string (`req.path.startswith("/v1")`) while Falcon's router strips
leading slashes, so `//v1/chat/completions` reached the completions route with no key at all. Now:
- every route is added through `Routes.add(template, resource, access)`; the access is kept by template;
- the decision is made in `process_resource`, on `req.uri_template`, the template Falcon actually matched;
- a matched route that declared nothing is refused (deny by default);
- a path that is not in canonical form (empty, `.` or `..` segments, encoded slashes, backslashes, control
  characters) is refused before routing: nginx refuses the same forms (nginx/nginx.conf.template), so a
  request meets one normalisation whichever door it comes through.

Keys: with no keys file (ALLOW_OPEN or a loopback-only API, see exposure.py) every declared route is open.
With one, KEY routes need a valid, unexpired key (401 `invalid_api_key`, as OpenAI answers) and ADMIN routes
an admin key, unless the request only reads (GET) and reached this process directly from loopback (Prometheus
scraping a replica's own port; a load or unload always needs the key). nginx always connects from loopback,
so a request it relayed (it sets X-Real-IP and X-Forwarded-For) never counts as local, whatever its client
sent. The key's record is left on `req.context.api_key` and its name on `req.context.key_name`.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum

import falcon

from services.common.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from services.keys.ring import KeyRing
from services.keys.store import ApiKey

FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
CHALLENGE = {"WWW-Authenticate": "Bearer"}
READS = frozenset({"GET", "HEAD"})
NONCANONICAL = r"//|/\.\.?(/|\?|$)|\x5c|%(2f|5c|2e|00)"
"""Doubled slashes, dot segments, backslashes, percent-encoded slash, backslash, dot or NUL: nginx's
`$noncanonical` map (nginx/nginx.conf.template) holds the same pattern; tests/unit/test_access.py checks."""
_REFUSED = re.compile(f"{NONCANONICAL}|[\\x00-\\x1f\\x7f]", re.IGNORECASE)


class Access(StrEnum):
    PUBLIC = "public"  # anyone: /health, the /status page, the OpenAPI document
    KEY = "key"  # any valid key
    ADMIN = "admin"  # an admin key; reads also from a direct loopback caller on a replica's own port


def canonical(raw_path: str) -> bool:
    """Whether a request path (as sent, before percent-decoding) is in the one form nginx and the API accept."""
    return raw_path.startswith("/") and _REFUSED.search(raw_path) is None


def raw_path(req: falcon.Request) -> str:
    """The path as the client sent it: gunicorn keeps it in RAW_URI, an ASGI server in the scope's raw_path."""
    env = getattr(req, "env", None)
    raw = env.get("RAW_URI") if env is not None else None
    if raw is None:
        scope = getattr(req, "scope", None) or {}
        raw_bytes = scope.get("raw_path")
        raw = raw_bytes.decode("latin-1") if raw_bytes else req.path
    return raw.split("?", 1)[0]


class Routes:
    """Adds routes to the app, each with who may call it; `access()` answers for a matched template."""

    def __init__(self, app: falcon.App) -> None:
        self.app = app
        self._access: dict[str, Access] = {}

    def add(self, template: str, resource: object, access: Access, **kwargs: object) -> None:
        self.app.add_route(template, resource, **kwargs)
        self._access[template] = access

    def access(self, template: str | None) -> Access | None:
        return self._access.get(template) if template is not None else None

    def declared(self) -> dict[str, Access]:
        return dict(self._access)


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
        return ipaddress.ip_address(peer_address(req)).is_loopback
    except ValueError:
        return False


def peer_address(req: falcon.Request) -> str:
    """The connecting peer's address, '' when unknown (Falcon's `remote_addr` says 127.0.0.1 then: not here)."""
    env = getattr(req, "env", None)
    if env is not None:
        return env.get("REMOTE_ADDR") or ""
    client = (getattr(req, "scope", None) or {}).get("client")
    return client[0] if client else ""


class AccessMiddleware:
    """Refuses non-canonical paths, then decides on the matched route's declared access; `ring` None: no keys."""

    def __init__(self, routes: Routes, ring: KeyRing | None) -> None:
        self.routes = routes
        self.ring = ring

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.api_key = None
        req.context.key_name = None
        if not canonical(raw_path(req)):
            raise InvalidRequest("The request path is not in canonical form.", code="invalid_path")

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict) -> None:
        """Falcon calls this only for a matched route; an unmatched path gets its 404 (the routes are public:
        /openapi.json lists them)."""
        access = self.routes.access(req.uri_template)
        if access is None:
            raise PermissionDenied("This route is not open to any caller.", code="route_not_declared")
        if self.ring is None or access is Access.PUBLIC or req.method == "OPTIONS":
            return  # no keys configured; or public; or a CORS preflight, which carries no key by design
        local_read = req.method in READS and direct_from_loopback(req)
        if access is Access.ADMIN and local_read and bearer(req) is None:
            return  # a local scraper on the replica's own port reads /metrics; nothing it may change
        record = self._authenticate(req)
        if access is Access.ADMIN and not record.admin and not local_read:
            raise PermissionDenied(f"This route needs an admin key; the key '{record.name}' is not one.")

    def _authenticate(self, req: falcon.Request) -> ApiKey:
        assert self.ring is not None
        token = bearer(req)
        if token is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY`.", headers=dict(CHALLENGE)
            )
        record = self.ring.find(token)
        if record is None or record.expired():
            # one message for unknown, revoked and expired keys: a caller learns nothing about which
            raise AuthenticationFailed("Incorrect or expired API key provided.", headers=dict(CHALLENGE))
        req.context.api_key = record
        req.context.key_name = record.name
        return record
