"""Route-bound access: canonical paths (one pattern shared with nginx), declared routes, deny by default."""

from __future__ import annotations

import re
from pathlib import Path

import falcon
import falcon.testing
import pytest

from services.api import errors
from services.api.limits.access import NONCANONICAL, Access, AccessMiddleware, Routes, canonical
from services.common.settings import ROOT
from services.keys import store
from services.keys.ring import KeyRing

REFUSED = ["//v1/chat/completions", "///v1/models", "/v1//models", "/%2Fv1/models", "/%2fv1/models",
           "/v1/models/..", "/v1/./models", "/v1/models/../system/status", "/v1%5cmodels", "/v1\\models",
           "/v1/models/%2e%2e", "/v1/models%00", "/v1/models\x01", "v1/models", ""]  # fmt: skip
ACCEPTED = ["/v1/chat/completions", "/v1/models/", "/v1/models/gemma-3.1", "/health", "/v1/models/a..b", "/"]


@pytest.mark.parametrize("path", REFUSED)
def test_non_canonical_paths_are_refused(path: str) -> None:
    assert not canonical(path)


@pytest.mark.parametrize("path", ACCEPTED)
def test_canonical_paths_pass(path: str) -> None:
    assert canonical(path)


def test_nginx_refuses_the_same_forms() -> None:
    """nginx's map holds the API's pattern, anchored to the path part of $request_uri."""
    template = (ROOT / "nginx" / "nginx.conf.template").read_text()
    found = re.search(r"map \$request_uri \$noncanonical \{\s*'~\*\^\[\^\?\]\*\((.*)\)' 1;", template)
    assert found, "nginx.conf.template lost its $noncanonical map"
    assert found.group(1) == NONCANONICAL
    nginx = re.compile(rf"^[^?]*({found.group(1)})", re.IGNORECASE)
    for path in REFUSED[:-3]:  # control bytes and a missing slash never reach nginx's map (it answers 400)
        assert nginx.search(path + "?q=1"), path
    for path in ACCEPTED:
        assert not nginx.search(path + "?next=//x/../y"), path  # a query may hold anything


class Hello:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"key": req.context.key_name}


def app_with(ring: KeyRing | None) -> falcon.testing.TestClient:
    app = falcon.App()
    routes = Routes(app)
    app.add_middleware(AccessMiddleware(routes, ring))
    errors.install(app)
    routes.add("/v1/open", Hello(), Access.PUBLIC)
    routes.add("/v1/keyed", Hello(), Access.KEY)
    routes.add("/v1/admin", Hello(), Access.ADMIN)
    app.add_route("/v1/forgotten", Hello())  # added without a declaration
    return falcon.testing.TestClient(app)


@pytest.fixture()
def keyed(tmp_path: Path) -> tuple[falcon.testing.TestClient, str, str]:
    path = tmp_path / "keys.json"
    user, admin = store.create(path, "user"), store.create(path, "root", admin=True)
    return app_with(KeyRing(path)), user, admin


def call(client: falcon.testing.TestClient, path: str, key: str | None = None) -> falcon.testing.Result:
    headers = {"X-Real-IP": "203.0.113.7"}  # as nginx relays it: never a local caller
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return client.simulate_get(path, headers=headers)


def test_an_undeclared_route_is_refused_even_to_an_admin(keyed) -> None:
    client, _user, admin = keyed
    result = call(client, "/v1/forgotten", admin)
    assert result.status_code == 403
    assert result.json["error"]["code"] == "route_not_declared"
    assert app_with(None).simulate_get("/v1/forgotten").status_code == 403  # no keys: still refused


def test_each_route_gets_its_declared_access(keyed) -> None:
    client, user, admin = keyed
    assert call(client, "/v1/open").status_code == 200
    assert call(client, "/v1/keyed").status_code == 401
    assert call(client, "/v1/keyed", user).json == {"key": "user"}
    assert call(client, "/v1/admin", user).status_code == 403
    assert call(client, "/v1/admin", admin).json == {"key": "root"}


def test_the_decision_follows_the_route_that_matched(keyed) -> None:
    """Falcon's router strips leading slashes: were the path refused only by its string, these would pass."""
    client, _user, _admin = keyed
    for path in ("//v1/keyed", "///v1/admin", "/v1//admin"):
        result = call(client, path)
        assert result.status_code == 400, path
        assert result.json["error"]["code"] == "invalid_path"


def test_unknown_paths_are_not_found_with_or_without_a_key(keyed) -> None:
    client, user, _admin = keyed
    assert call(client, "/v1/nothing-here").status_code == 404
    assert call(client, "/v1/nothing-here", user).status_code == 404
