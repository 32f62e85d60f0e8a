"""Which catalog models a worker's engines can load (services/worker/servable.py), from a real catalog file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.catalog import Catalog
from services.worker.engines.factory import upstream_names
from services.worker.servable import Servable

CATALOG = """
default: chat
models:
  chat:
    aliases: [chat-alias]
    sources:
      llama_cpp: {path: chat.gguf}
      llama_server: {path: chat.gguf}
      mlx: {path: mlx/chat}
  embedder:
    kind: embedding
    sources:
      llama_cpp: {path: embed.gguf}
      llama_server: {path: embed.gguf}
  big:
    sources:
      llama_cpp: {path: big.gguf}
      vllm: {hf_repo: Org/Big-Model}
"""


@pytest.fixture()
def catalog(tmp_path: Path) -> Catalog:
    (tmp_path / "models.yaml").write_text(CATALOG)
    for name in ("chat.gguf", "embed.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    (tmp_path / "mlx" / "chat").mkdir(parents=True)
    return Catalog.from_yaml(tmp_path / "models.yaml")


def test_a_sidecar_serves_only_what_it_was_started_with(catalog: Catalog, tmp_path: Path) -> None:
    embedder = Servable(catalog, ("llama_server",), tmp_path)
    embedder.pin(["embedder"])
    assert embedder.models() == ("embedder",)
    assert embedder.reason("chat") == "its llama_server serves only embedder"
    assert Servable(catalog, ("vllm",), tmp_path).reason("big") == (
        "its vllm serves only the model it was started with"
    ), "nothing pinned yet: nothing served"


def test_an_in_process_engine_loads_what_has_weights_here_of_a_kind_it_runs(catalog: Catalog, tmp_path: Path) -> None:
    llama_cpp = Servable(catalog, ("llama_cpp",), tmp_path)
    assert llama_cpp.models() == ("chat", "embedder")
    assert llama_cpp.reason("big") == "its llama_cpp weights (big.gguf) are not on this machine"
    mlx = Servable(catalog, ("mlx",), tmp_path)
    assert mlx.models() == ("chat",)
    assert mlx.reason("embedder") == "mlx does not run embedding models"
    assert mlx.reason("big") == "models.yaml has no mlx source for it"


def test_engines_in_fallback_order_add_up(catalog: Catalog, tmp_path: Path) -> None:
    both = Servable(catalog, ("vllm", "llama_cpp"), tmp_path)
    both.pin(["big"])
    assert both.models() == ("chat", "embedder", "big")
    assert Servable(catalog, (), tmp_path).reason("chat") == "this worker has no engine"


def test_a_sidecar_may_report_the_id_an_alias_its_file_or_its_repo(catalog: Catalog) -> None:
    assert upstream_names(catalog, "chat", "llama_server") == ("chat", "chat-alias", "chat.gguf")
    assert upstream_names(catalog, "big", "vllm") == ("big", "Org/Big-Model")


def test_an_engine_not_described_here_serves_only_its_start_model(catalog: Catalog, tmp_path: Path) -> None:
    """The bench's instant engine (bench/instant_worker.py) is such a one: it failed to start once refused."""
    servable = Servable(catalog, ["instant"], tmp_path)
    assert servable.models() == ()
    servable.pin(["chat-alias"])
    assert servable.models() == ("chat",)
    assert "serves only chat" in (servable.reason("embedder") or "")
