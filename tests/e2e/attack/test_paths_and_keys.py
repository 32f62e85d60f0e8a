"""From outside, through nginx: every route in every path form, with no key, a user key and an admin key;
admin routes with a user key; odd methods; spoofed forwarding headers. A bypass is any 2xx where a key was
missing or too weak; every answer must be OpenAI's error envelope, and none a 5xx.

Raw requests go out with http.client, which sends the path exactly as given (httpx would remove dot
segments before sending, and an attacker's client does not).
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from tests.e2e.attack.conftest import AttackStack

pytestmark = pytest.mark.e2e
STACK_WORKER = False  # who may call what is decided before the queue: no engine needed
OUTSIDE = "203.0.113.9"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    access: str  # public, key, admin
    body: dict | None = None


CHAT = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
ROUTES = [
    Route("POST", "/v1/chat/completions", "key", CHAT),
    Route("POST", "/v1/completions", "key", {"model": "gemma-3-270m", "prompt": "hi", "max_tokens": 1}),
    Route("POST", "/v1/embeddings", "key", {"model": "gemma-3-270m", "input": "hi"}),
    Route("POST", "/v1/responses", "key", {"model": "gemma-3-270m", "input": "hi", "max_output_tokens": 16}),
    Route("GET", "/v1/models", "key"),
    Route("GET", "/v1/models/gemma-3-270m", "key"),
    Route("POST", "/v1/models/load", "admin", {"model": "gemma-3-270m", "worker": "nobody"}),
    Route("POST", "/v1/models/unload", "admin", {"model": "gemma-3-270m", "worker": "nobody"}),
    Route("GET", "/v1/system/status", "admin"),
    Route("GET", "/v1/usage", "admin"),
    Route("GET", "/metrics", "admin"),
    Route("GET", "/health", "public"),
    Route("GET", "/status", "public"),
]
GUARDED = [r for r in ROUTES if r.access != "public"]


def forms(path: str) -> list[str]:
    """The same route written as an attacker would: each is refused as not canonical (400)."""
    head, _, tail = path[1:].partition("/")
    return [
        "/" + path,
        "//" + path,
        "/%2F" + path[1:],
        "/%2f" + path[1:],
        f"/{head}//{tail}",
        f"/{head}/./{tail}",
        f"/{head}/x/../{tail}",
        f"/{head}/%2e%2e/{head}/{tail}",
        f"/{head}%2F{tail}",
        f"/{head}%5C{tail}",
        f"/{head}/{tail}%00",
    ]


def send(url: str, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=sent | (headers or {}))
        reply = conn.getresponse()
        return reply.status, reply.read(), {k.lower(): v for k, v in reply.getheaders()}
    finally:
        conn.close()


def assert_envelope(status: int, raw: bytes, where: str) -> dict:
    assert status < 500, f"{where}: {status} {raw[:200]!r}"
    error = json.loads(raw)["error"]
    assert {"message", "type", "param", "code"} <= set(error), where
    return error


@pytest.mark.parametrize("route", GUARDED, ids=lambda r: f"{r.method} {r.path}")
def test_no_path_form_walks_past_the_key_check(attack: AttackStack, route: Route) -> None:
    """The finding: `//v1/...`, `///v1/...` and `/%2Fv1/...` answered 200 with no key."""
    for key in (None, attack.user):
        headers = attack.auth(key) if key else {}
        for path in forms(route.path):
            status, raw, _ = send(attack.url, route.method, path, route.body, headers)
            where = f"{route.method} {path} key={'user' if key else 'none'}"
            assert status == 400, f"{where}: {status} {raw[:200]!r}"
            # nginx refuses `%00` itself, as a request line it cannot parse
            assert assert_envelope(status, raw, where)["code"] in ("invalid_path", "bad_request"), where


@pytest.mark.parametrize("route", GUARDED, ids=lambda r: f"{r.method} {r.path}")
def test_keys_are_needed_on_every_guarded_route(attack: AttackStack, route: Route) -> None:
    for path in (route.path, route.path + "/"):  # a trailing slash is the same route, with the same check
        status, raw, headers = send(attack.url, route.method, path, route.body)
        assert status == 401, f"{route.method} {path}: {status} {raw[:200]!r}"
        assert assert_envelope(status, raw, path)["code"] == "invalid_api_key"
        assert headers.get("www-authenticate") == "Bearer"
        status, raw, _ = send(attack.url, route.method, path, route.body, attack.auth("sk-" + "x" * 43))
        assert status == 401, path
    case = route.path.upper()  # another route, which does not exist
    status, raw, _ = send(attack.url, route.method, case, route.body)
    assert status == 404 and assert_envelope(status, raw, case)["code"] == "not_found"


@pytest.mark.parametrize("route", [r for r in ROUTES if r.access == "admin"], ids=lambda r: f"{r.method} {r.path}")
def test_admin_routes_refuse_a_user_key(attack: AttackStack, route: Route) -> None:
    status, raw, _ = send(attack.url, route.method, route.path, route.body, attack.auth(attack.user))
    assert status == 403, f"{route.path}: {status} {raw[:200]!r}"
    assert assert_envelope(status, raw, route.path)["code"] == "permission_denied"
    status, raw, _ = send(attack.url, route.method, route.path, route.body, attack.auth(attack.admin))
    assert status not in (401, 403) and status < 500, f"{route.path}: {status} {raw[:200]!r}"


SPOOFS = [
    {"X-Real-IP": "127.0.0.1"},
    {"X-Forwarded-For": "127.0.0.1"},
    {"X-Forwarded-For": "127.0.0.1, 127.0.0.1"},
    {"Forwarded": "for=127.0.0.1"},
    {"Host": "localhost"},
    {"Host": "127.0.0.1", "X-Real-IP": "::1", "X-Forwarded-Host": "localhost", "X-Original-URL": "/health"},
]


@pytest.mark.parametrize("route", GUARDED, ids=lambda r: f"{r.method} {r.path}")
def test_spoofed_forwarding_headers_make_no_one_local(attack: AttackStack, route: Route) -> None:
    for spoof in SPOOFS:
        status, raw, _ = send(attack.url, route.method, route.path, route.body, spoof)
        assert status == 401, f"{route.method} {route.path} {spoof}: {status} {raw[:200]!r}"


def test_a_replica_refuses_the_same_forms_without_nginx(attack: AttackStack) -> None:
    """One normalisation at both doors: a caller that reaches a replica's port directly meets it too."""
    replica = attack.stack.replica_url(1)
    for path in forms("/v1/chat/completions"):
        status, raw, _ = send(replica, "POST", path, CHAT, {"X-Real-IP": OUTSIDE})
        assert status == 400 and assert_envelope(status, raw, path)["code"] == "invalid_path", (path, raw[:200])


METHODS = ["PUT", "DELETE", "PATCH", "TRACE", "CONNECT", "PROPFIND", "FOO", "GETS", "post"]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_other_methods_are_refused_in_the_envelope(attack: AttackStack, route: Route) -> None:
    for method in METHODS:
        for key in (None, attack.admin):
            status, raw, _ = send(attack.url, method, route.path, None, attack.auth(key) if key else {})
            where = f"{method} {route.path}"
            assert status in (400, 401, 403, 405, 501), f"{where}: {status} {raw[:200]!r}"
            if raw:  # nginx answers some methods (TRACE, CONNECT) itself
                assert_envelope(status, raw, where)


def test_no_key_reaches_nothing_but_public_routes(attack: AttackStack) -> None:
    """Counted for the closing note: every guarded route x every form x no key / user key."""
    bypasses = 0
    tried = 0
    for route in GUARDED:
        for path in [route.path, *forms(route.path)]:
            for key in (None, attack.user if route.access == "admin" else None):
                tried += 1
                status, _raw, _ = send(attack.url, route.method, path, route.body, attack.auth(key) if key else {})
                bypasses += status < 300
    print(f"\npath forms x guarded routes: {tried} requests, {bypasses} bypasses")
    assert bypasses == 0
