"""GET /openapi.json: an OpenAPI 3.1 document of every route, built from the app itself so it cannot drift.

The paths and methods are read from Falcon's router (`falcon.inspect`), who may call each from the access
it was declared with (access.py), and each request body's schema from the pydantic model that `parse()`
validates it with. OPERATIONS says the rest (a summary, the success answer); a route without an entry, or an
entry without a route, fails the build, and tests/unit/test_openapi.py builds it from `create_app`.
Schemathesis fuzzes every operation of this document through nginx (tests/e2e/attack/test_fuzz.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import falcon
import falcon.inspect
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.api.limits.access import Access, Routes
from services.api.routes.embeddings import EmbeddingRequest
from services.api.routes.responses import ResponseRequest
from services.api.routes.system import VERSION
from services.common.schemas import ChatCompletionRequest, CompletionRequest, ModelCommand

REF = "#/components/schemas/{model}"
JSON = "application/json"
SSE = "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """A JSON object with these properties, the first ones required; other properties may appear."""
    return {"type": "object", "required": list(required), "properties": required | optional}


_STR, _INT = {"type": "string"}, {"type": "integer"}
_USAGE = _obj({"prompt_tokens": _INT, "total_tokens": _INT}, completion_tokens=_INT)
SHAPES: dict[str, dict[str, Any]] = {
    "Error": _obj({
        "error": _obj({
            "message": _STR,
            "type": _STR,
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        })
    }),
    "ChatCompletion": _obj({"id": _STR, "object": {"const": "chat.completion"}, "created": _INT, "model": _STR,
                            "choices": {"type": "array"}}, usage=_USAGE),
    "TextCompletion": _obj({"id": _STR, "object": {"const": "text_completion"}, "created": _INT, "model": _STR,
                            "choices": {"type": "array"}}, usage=_USAGE),
    "Response": _obj({"id": _STR, "object": {"const": "response"}, "status": _STR, "output": {"type": "array"}}),
    "EmbeddingList": _obj({
        "object": {"const": "list"},
        "data": {"type": "array", "items": _obj({"object": {"const": "embedding"}, "index": _INT,
                                                 "embedding": {"type": ["array", "string"]}})},
        "model": _STR,
        "usage": _USAGE,
    }),
    "Model": _obj({"id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR}),
    "ModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}),
    "ModelCommandAccepted": _obj({"object": _STR, "model": _STR, "status": _STR,
                                  "workers": {"type": "array", "items": _STR}}),
    "Health": _obj({"status": _STR, "models": {"type": "array", "items": _STR}, "workers": _INT, "version": _STR}),
    "SystemStatus": _obj({"object": {"const": "system.status"}, "version": _STR, "models": {"type": "object"},
                          "workers": {"type": "array"}}),
    "UsageList": _obj({"object": {"const": "list"}, "date": {"type": "string", "format": "date"},
                       "data": {"type": "array"}}),
}  # fmt: skip
"""The main success shapes, loosely: what a client may rely on, not every field."""

ERRORS = {
    "400": "Invalid request (a parameter named in `error.param`)",
    "401": "Missing, wrong or expired API key",
    "403": "The key may not call this route or use this model",
    "404": "Unknown route or model",
    "405": "Method not allowed",
    "413": "Request body too large",
    "415": "Body is not JSON",
    "429": "Rate limited",
    "503": "No worker serves the model, or the queue is unavailable",
    "504": "The request timed out",
}
"""Every error is the OpenAI envelope; each operation lists the ones it can answer."""


@dataclass(frozen=True)
class Operation:
    """What the router cannot tell: what an operation is for, what it reads and what it answers."""

    summary: str
    body: type[BaseModel] | None = None
    answer: str | None = None  # a SHAPES name, answered as JSON
    status: int = 200
    media: str = JSON
    streams: bool = False  # `"stream": true` answers server-sent events
    query: tuple[dict[str, Any], ...] = ()
    errors: tuple[str, ...] = ("400", "404", "405")


_GENERATE = ("400", "404", "405", "413", "415", "429", "503", "504")
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/v1/chat/completions", "POST"): Operation("Create a chat completion", ChatCompletionRequest,
                                                "ChatCompletion", streams=True, errors=_GENERATE),
    ("/v1/completions", "POST"): Operation("Create a text completion", CompletionRequest, "TextCompletion",
                                           streams=True, errors=_GENERATE),
    ("/v1/embeddings", "POST"): Operation("Create embeddings", EmbeddingRequest, "EmbeddingList", errors=_GENERATE),
    ("/v1/responses", "POST"): Operation("Create a response (Responses API)", ResponseRequest, "Response",
                                         streams=True, errors=_GENERATE),
    ("/v1/models", "GET"): Operation("Models that live workers serve now", answer="ModelList"),
    ("/v1/models/{model_id:path}", "GET"): Operation("One served model", answer="Model",
                                                     errors=("400", "404", "405", "503")),
    ("/v1/models/load", "POST"): Operation("Ask a worker to load a model", ModelCommand, "ModelCommandAccepted", 202,
                                           errors=("400", "404", "405", "413", "415", "503")),
    ("/v1/models/unload", "POST"): Operation("Ask workers to unload a model", ModelCommand, "ModelCommandAccepted",
                                             202, errors=("400", "404", "405", "413", "415", "503")),
    ("/v1/system/status", "GET"): Operation("The fleet, queues and recent traffic", answer="SystemStatus"),
    ("/v1/usage", "GET"): Operation("One day's usage per key", answer="UsageList", query=(
        {"name": "date", "in": "query", "required": False, "description": "YYYY-MM-DD (UTC); today if absent",
         "schema": {"type": "string", "format": "date"}},
    )),
    ("/status", "GET"): Operation("The status page (HTML; its data comes from /v1/system/status)",
                                  media=falcon.MEDIA_HTML, errors=("400", "405")),
    ("/health", "GET"): Operation("Liveness: the API and Redis answer", answer="Health", errors=("400", "405", "503")),
    ("/metrics", "GET"): Operation("Prometheus metrics of this replica", media="text/plain", errors=("400", "405")),
    ("/openapi.json", "GET"): Operation("This document", errors=("400", "405")),
}  # fmt: skip

SECURITY = {
    Access.PUBLIC: [],
    Access.KEY: [{"bearer": []}],
    Access.ADMIN: [{"bearer": []}],
}
"""An admin route takes the same bearer scheme; the key must be an admin key (a 403 says so otherwise)."""

ENVELOPE = 'Every error is OpenAI\'s envelope: {"error": {"message", "type", "param", "code"}}.'
_CONVERTER = re.compile(r"\{(\w+)(?::[^}]*)?\}")


class DocumentError(RuntimeError):
    """The router and OPERATIONS disagree: a route with no entry, an entry with no route, or no declared access."""


def routes(app: falcon.App) -> set[tuple[str, str]]:
    """(template, method) of every responder the app defines; Falcon's own defaults (405, OPTIONS) left out."""
    return {
        (route.path, method.method)
        for route in falcon.inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal
    }


def openapi_path(template: str) -> str:
    """Falcon's `{model_id:path}` as OpenAPI writes it: `{model_id}`."""
    return _CONVERTER.sub(r"{\1}", template)


def _schemas() -> tuple[dict[str, Any], dict[type[BaseModel], dict[str, Any]]]:
    """Every request model's JSON Schema, nested models shared under components/schemas."""
    models = sorted({op.body for op in OPERATIONS.values() if op.body is not None}, key=lambda m: m.__name__)
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    defs = top.get("$defs", {})
    clash = set(defs) & set(SHAPES)
    if clash:
        raise DocumentError(f"request and answer schemas share names: {sorted(clash)}")
    return defs | SHAPES, {m: refs[(m, "validation")] for m in models}


def _responses(op: Operation) -> dict[str, Any]:
    content: dict[str, Any] = {op.media: {"schema": _ref(op.answer)} if op.answer else {}}
    if op.streams:
        content[SSE] = {"schema": {"type": "string"}}
    out: dict[str, Any] = {str(op.status): {"description": "OK", "content": content}}
    for status in op.errors:
        out[status] = {"$ref": f"#/components/responses/{status}"}
    return out


def _operation(template: str, method: str, op: Operation, access: Access, bodies: dict) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "operationId": f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', openapi_path(template))}".rstrip("_"),
        "summary": op.summary,
        "security": SECURITY[access],
        "responses": _responses(op),
    }
    if access is Access.ADMIN:
        spec["description"] = "Needs an admin key."
    if access is not Access.PUBLIC:
        spec["responses"] |= {"401": {"$ref": "#/components/responses/401"}}
        spec["responses"] |= {"403": {"$ref": "#/components/responses/403"}}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for name in _CONVERTER.findall(template)]  # fmt: skip
    params += [dict(q) for q in op.query]
    if params:
        spec["parameters"] = params
    if op.body is not None:
        spec["requestBody"] = {"required": True, "content": {JSON: {"schema": bodies[op.body]}}}
    return spec


def document(app: falcon.App, declared: Mapping[str, Access]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`, whose routes were declared with `declared` access (Routes.declared())."""
    found = routes(app)
    missing, stale = found - set(OPERATIONS), set(OPERATIONS) - found
    if missing or stale:
        raise DocumentError(f"routes without an OPERATIONS entry: {sorted(missing)}; entries without a route: "
                            f"{sorted(stale)}")  # fmt: skip
    undeclared = {template for template, _ in found if template not in declared}
    if undeclared:
        raise DocumentError(f"routes without a declared access: {sorted(undeclared)}")
    schemas, bodies = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for template, method in sorted(found):
        op = OPERATIONS[(template, method)]
        paths.setdefault(openapi_path(template), {})[method.lower()] = _operation(
            template, method, op, declared[template], bodies
        )
    error = {"description": "", "content": {JSON: {"schema": _ref("Error")}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Inference service (OpenAI-compatible)",
            "version": VERSION,
            "description": ENVELOPE,
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {status: error | {"description": text} for status, text in ERRORS.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key (sk-...)"}},
        },
        "security": [{"bearer": []}],
    }


class OpenApiResource:
    """Built on the first GET, when every route is in place, and kept: routes do not change after start."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self._doc: dict[str, Any] | None = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._doc is None:
            self._doc = document(self.routes.app, self.routes.declared())
        resp.media = self._doc
