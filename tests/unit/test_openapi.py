"""The OpenAPI document is the app's own routes: every route Falcon has is in it and nothing else is."""

from __future__ import annotations

import falcon
import falcon.testing
import pytest
import redis
import schemathesis

from services.api.app import create_app
from services.api.limits.access import Access, Routes
from services.api.routes import openapi
from services.common.catalog import Catalog
from services.common.schemas import ChatCompletionRequest, ModelCommand
from services.common.settings import Settings


@pytest.fixture(scope="module")
def app() -> falcon.App:
    settings = Settings()
    nowhere = redis.Redis(host="127.0.0.1", port=1)  # never reached: the document needs no Redis
    return create_app(settings, nowhere, Catalog.from_yaml(settings.models_file, settings.default_model))


@pytest.fixture(scope="module")
def doc(app: falcon.App) -> dict:
    reply = falcon.testing.TestClient(app).simulate_get("/openapi.json")
    assert reply.status_code == 200, reply.text
    return reply.json


def test_every_route_falcon_has_is_in_the_document_and_nothing_else(app: falcon.App, doc: dict) -> None:
    served = {(openapi.openapi_path(template), method.lower()) for template, method in openapi.routes(app)}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == served
    assert ("/v1/chat/completions", "post") in served and ("/v1/models/{model_id}", "get") in served
    assert ("/openapi.json", "get") in served  # the document describes itself too


def test_falcon_defaults_are_not_routes(app: falcon.App) -> None:
    """Falcon answers 405 and OPTIONS on every route itself; those are not operations of ours."""
    methods = {method for _, method in openapi.routes(app)}
    assert methods == {"GET", "POST"}


def test_a_route_added_without_an_entry_fails_the_build() -> None:
    app = falcon.App()
    routes = Routes(app)
    routes.add("/health", object(), Access.PUBLIC)  # no responders: not a route
    assert openapi.routes(app) == set()

    class Nameless:
        def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None: ...

    routes.add("/v1/secret", Nameless(), Access.ADMIN)
    with pytest.raises(openapi.DocumentError, match="/v1/secret"):
        openapi.document(app, routes.declared())


def test_an_entry_without_a_route_fails_the_build(app: falcon.App) -> None:
    bare = falcon.App()
    with pytest.raises(openapi.DocumentError, match="entries without a route"):
        openapi.document(bare, {})


def test_security_follows_the_declared_access(doc: dict) -> None:
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []
    assert doc["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearer": []}]
    assert doc["paths"]["/v1/models/load"]["post"]["security"] == [{"bearer": []}]
    assert "401" in doc["paths"]["/v1/usage"]["get"]["responses"]
    assert "401" not in doc["paths"]["/health"]["get"]["responses"]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key (sk-...)"
    }  # fmt: skip


def test_request_bodies_are_the_models_that_validate_them(doc: dict) -> None:
    schemas = doc["components"]["schemas"]
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    fields = {f.alias or name for name, f in ChatCompletionRequest.model_fields.items()}
    assert set(schemas["ChatCompletionRequest"]["properties"]) == fields
    assert set(schemas["ChatCompletionRequest"]["required"]) == {"model", "messages"}
    assert set(schemas["ModelCommand"]["properties"]) == set(ModelCommand.model_fields)
    # bounds the API enforces are in the document, so a fuzzer probes them
    assert schemas["ChatCompletionRequest"]["properties"]["n"]["maximum"] == 128


def test_every_ref_resolves(doc: dict) -> None:
    def refs(node: object) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    for ref in refs(doc):
        _, section, kind, name = ref.split("/")
        assert name in doc[section][kind], ref


def test_errors_are_the_openai_envelope(doc: dict) -> None:
    envelope = doc["components"]["schemas"]["Error"]
    assert envelope["required"] == ["error"]
    assert envelope["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    for status, response in doc["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, status


def test_schemathesis_reads_every_operation(doc: dict) -> None:
    loaded = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in loaded.get_all_operations()]
    assert {(op.path, op.method.upper()) for op in operations} == {
        (path, method.upper()) for path, ops in doc["paths"].items() for method in ops
    }
