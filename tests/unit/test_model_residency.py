"""What decides whether a model is loaded and for how long: keep_alive values, the memory budget, a model's cost
read from its own GGUF, the context the budget leaves, and which models a worker lists as loadable."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rq import Queue

from services.common import durations, keys
from services.common.catalog import Catalog, CatalogError
from services.common.gguf_info import read
from services.worker import budget
from services.worker.servable import Servable
from tests.conftest import ROOT

MODELS = ROOT / "models"
GEMMA = MODELS / "gemma-3-270m-q4_k_m.gguf"
SMOL = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
needs_weights = pytest.mark.skipif(not (GEMMA.exists() and SMOL.exists()), reason="run `make models` first")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("30s", 30), ("250ms", 0.25), ("90", 90), (0, 0), (12.5, 12.5), ("0", 0)],
)
def test_keep_alive_reads_ollama_s_forms(value: object, seconds: float) -> None:
    assert durations.seconds(value) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, "-1", "-5m", 10**12])
def test_negative_or_absurd_keep_alive_is_forever(value: object) -> None:
    assert durations.seconds(value) == math.inf  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["soon", "5x", "m", "", "5m and more", True])
def test_anything_else_is_refused_with_the_forms_it_takes(value: object) -> None:
    with pytest.raises(durations.BadDuration, match="keep_alive"):
        durations.seconds(value)  # type: ignore[arg-type]


def test_a_catalog_with_a_bad_keep_alive_stops_at_start_naming_the_model_and_field() -> None:
    text = "default: m\nmodels:\n  m:\n    keep_alive: later\n"
    with pytest.raises(CatalogError, match=r"model 'm': field keep_alive: .*not a duration"):
        Catalog.from_text(text)


def test_a_model_s_context_is_its_own_capped_by_n_ctx() -> None:
    catalog = Catalog.from_text(
        "models:\n  a: {context_length: 32768}\n  b: {context_length: 8192, context: 4096}\n", "a"
    )
    assert catalog.models["a"].runtime_context(None) == 32768
    assert catalog.models["a"].runtime_context(2048) == 2048
    assert catalog.models["b"].runtime_context(None) == 4096
    assert catalog.models["b"].runtime_context(16384) == 4096


def test_budget_sizes() -> None:
    assert budget.parse_budget("4GiB") == 4 * 2**30
    assert budget.parse_budget("512MB") == 512 * 10**6
    assert budget.parse_budget("auto", available=10 * 2**30) == int(0.8 * 10 * 2**30)
    assert 0 < budget.parse_budget("auto") < budget.memory_available() + 1
    with pytest.raises(ValueError, match="MEMORY_BUDGET"):
        budget.parse_budget("lots")


@needs_weights
def test_the_kv_cache_shape_comes_from_the_gguf() -> None:
    """Gemma 3 270M: 18 blocks, 1 KV head of 256 + 256; SmolLM2 135M: 30 blocks, 3 KV heads of 64 + 64."""
    gemma, smol = read(GEMMA), read(SMOL)
    assert (gemma.layers, gemma.kv_width, gemma.context_length) == (18, 512, 32768)
    assert (smol.layers, smol.kv_width, smol.context_length) == (30, 384, 8192)


@needs_weights
def test_a_model_costs_its_weights_its_kv_cache_and_the_overhead() -> None:
    cost = budget.cost(GEMMA, slots=2, wanted=1024, cap=None, budget=2**40)
    assert cost.context == 1024
    assert cost.weights == GEMMA.stat().st_size
    assert cost.kv == 2 * 1024 * 18 * 512 * budget.KV_BYTES
    assert cost.total == cost.weights + cost.kv + budget.OVERHEAD


@needs_weights
def test_the_budget_lowers_the_context_before_it_refuses() -> None:
    weights = GEMMA.stat().st_size
    per_token = 4 * 18 * 512 * budget.KV_BYTES
    room = weights + budget.OVERHEAD + 3000 * per_token
    cost = budget.cost(GEMMA, slots=4, wanted=32768, cap=None, budget=room)
    assert cost.context == 2816, "the largest multiple of 256 that fits"
    assert cost.total <= room
    assert budget.cost(GEMMA, slots=4, wanted=32768, cap=2048, budget=room).context == 2048, "N_CTX caps it"
    with pytest.raises(budget.DoesNotFit, match=r"needs at least \d+ MiB .* the memory budget is \d+ MiB"):
        budget.cost(GEMMA, slots=4, wanted=32768, cap=None, budget=weights)


def test_a_split_gguf_weighs_all_its_parts(tmp_path: Path) -> None:
    for i, size in enumerate((1000, 700, 300), start=1):
        (tmp_path / f"big-{i:05d}-of-00003.gguf").write_bytes(b"\0" * size)
    assert budget.weights_size(tmp_path / "big-00001-of-00003.gguf") == 2000


def test_the_queue_the_worker_watches_is_rq_s_list() -> None:
    """demand.py and the keep_alive check LLEN this key; RQ's own name for it is what the API pushes onto."""
    assert keys.queue_key("m") == Queue.redis_queue_namespace_prefix + keys.queue_name("m")


@needs_weights
def test_a_worker_with_its_own_llama_servers_on_demand_can_load_every_model_whose_weights_are_here() -> None:
    catalog = Catalog.from_yaml(MODELS / "models.yaml")
    pinned = Servable(catalog, ("llama_server",), MODELS)
    pinned.pin(["gemma-3-270m"])
    assert pinned.models() == ("gemma-3-270m",), "a llama-server it did not start serves only its model"
    own = Servable(catalog, ("llama_server",), MODELS, any_model=True)
    own.pin(["gemma-3-270m"])
    assert {"gemma-3-270m", "smollm2-135m-instruct"} <= set(own.models())
    assert "qwen2.5-0.5b-instruct" not in own.models() or (MODELS / "qwen2.5-0.5b-instruct-q4_k_m.gguf").exists()
    assert own.reason("qwen2.5-0.5b-instruct") is None or "not on this machine" in own.reason("qwen2.5-0.5b-instruct")
