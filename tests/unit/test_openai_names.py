"""`openai_names: all` in models.yaml maps every OpenAI model name a client may send, current and legacy, to the
default model; a list maps only its names; a model's own id or alias wins over either."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.catalog import Catalog, CatalogError
from services.common.errors import ModelNotFound

MODELS = """
default: base
models:
  base: {sources: {llama_server: {path: base.gguf}}}
  other: {aliases: [gpt-4o], sources: {llama_server: {path: other.gguf}}}
"""
SENT = (
    "gpt-4.1",
    "gpt-4.1-mini",
    "GPT-4o-mini",
    "o1",
    "o3-mini",
    "gpt-4-turbo",
    "gpt-3.5-turbo-instruct",
    "davinci-002",
    "babbage-002",
    "text-davinci-002",
    "text-davinci-003",
)


def test_all_maps_every_openai_name_to_the_default_but_a_models_own_alias_wins() -> None:
    catalog = Catalog.from_text(MODELS + "openai_names: all\n")
    assert {catalog.resolve(name) for name in SENT} == {"base"}
    assert catalog.resolve("gpt-4o") == "other"
    with pytest.raises(ModelNotFound):
        catalog.resolve("gpt-made-up")


def test_a_list_maps_only_its_names_and_a_wrong_value_is_one_line() -> None:
    catalog = Catalog.from_text(MODELS + "openai_names: [gpt-4.1]\n")
    assert catalog.resolve("gpt-4.1") == "base"
    with pytest.raises(ModelNotFound):
        catalog.resolve("davinci-002")
    with pytest.raises(CatalogError, match="openai_names"):
        Catalog.from_text(MODELS + "openai_names: some\n")


def test_the_shipped_catalog_takes_them_all() -> None:
    catalog = Catalog.from_yaml(Path(__file__).parents[2] / "models" / "models.yaml")
    assert {catalog.resolve(name) for name in SENT} == {catalog.default}
