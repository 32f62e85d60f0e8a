"""The gateway's metric labels come from closed sets, whatever a client sends (issue 25: 300 requests to
/health with random methods grew a replica's /metrics from 381 to 3,401 lines).

The app as create_app builds it, on a real Redis, driven in-process by Falcon's test client.
"""

from __future__ import annotations

import random
import re
import string

import pytest
from falcon import testing

from services.api.app import create_app
from services.api.observability.metrics import METHODS, ApiMetrics
from services.common.catalog import Catalog
from services.common.settings import Settings

pytestmark = pytest.mark.integration
SAMPLE = re.compile(r"^inference_gateway_\w+\{(.*)\} ", re.MULTILINE)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters) for _ in range(n))


def gateway_lines(api: testing.TestClient) -> list[str]:
    text = api.simulate_get("/metrics").text
    return [line for line in text.splitlines() if line.startswith("inference_gateway_")]


def labels(lines: list[str]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for line in lines:
        match = SAMPLE.match(line + " ")
        if match:
            for name, value in LABEL.findall(match.group(1)):
                seen.setdefault(name, set()).add(value)
    return seen


def random_requests(api: testing.TestClient, rng: random.Random, count: int, models: list[str]) -> None:
    for _ in range(count):
        roll = rng.random()
        if roll < 0.4:  # the finding: random methods on a public route
            api.simulate_request(word(rng, 8).upper(), "/health")
        elif roll < 0.6:
            api.simulate_request(rng.choice(["GET", "POST", "BREW"]), f"/{word(rng, 12)}/{word(rng, 5)}")
        elif roll < 0.8:  # a model name the catalog does not know
            body = {"model": word(rng, 20), "messages": [{"role": "user", "content": "x"}]}
            api.simulate_post("/v1/chat/completions", json=body)
        else:  # a catalog model with no worker: 503, counted under its id
            api.simulate_post("/v1/completions", json={"model": rng.choice(models), "prompt": "x"})


def test_random_methods_paths_and_models_do_not_grow_the_label_sets(quiet_redis_client, quiet_redis_url):
    """On database 1: a live worker (tests/e2e/api's, on database 0) would answer some requests 200 in one round
    and leave the other round's statuses to chance."""
    redis_client = quiet_redis_client
    settings = Settings(redis_url=quiet_redis_url)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    generating = [m for m, spec in catalog.models.items() if spec.kind == "generate"]
    api = testing.TestClient(create_app(settings, redis_client, catalog))
    rng = random.Random(25)
    gateway_lines(api)  # the scrape is counted too: once before, so both readings hold it
    random_requests(api, rng, 300, generating)
    first = gateway_lines(api)
    random_requests(api, rng, 300, generating)
    second = gateway_lines(api)
    assert len(second) == len(first), f"{len(first)} -> {len(second)} lines: a label took a value from a request"
    seen = labels(second)
    assert seen["method"] <= METHODS | {"other"} and "other" in seen["method"], seen["method"]
    routes = {"/health", "/metrics", "/v1/chat/completions", "/v1/completions", "unmatched"}
    assert seen["route"] <= routes and "unmatched" in seen["route"], "templates, never raw paths"
    assert seen["model_name"] <= set(catalog.models) | {"", "unknown"}, seen["model_name"]
    assert seen["model_name"] & set(generating), "a catalog id is a label value"
    assert seen["status"] <= {"200", "400", "404", "405", "503"}, seen["status"]
    assert len(second) < 400, f"{len(second)} gateway lines"


def test_a_model_name_outside_the_catalog_is_counted_as_unknown():
    """Defence in depth: the routes label the id the catalog resolved, and the metrics hold them to it."""
    metrics = ApiMetrics(models=("m",))
    for model in ("m", "", "x" * 50, "y"):
        metrics.responded("/v1/completions", "POST", "200", 0.01, model)
        metrics.gateway_overhead(model, 0.001)
        metrics.cancelled(model)
    values = {s.labels.get("model_name") for m in metrics.registry.collect() for s in m.samples}
    assert values - {None} == {"m", "", "unknown"}, values
