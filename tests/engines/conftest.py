"""The engine every conformance-style test runs on: one per factory in tests/engines/factories/ (llama.cpp
in-process, llama-server, MLX where it runs), module-scoped since starting one loads the model."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

FACTORIES = sorted(p.stem for p in (Path(__file__).parent / "factories").glob("*.py") if p.stem != "__init__")


@pytest.fixture(scope="module", params=FACTORIES)
def engine(request, gemma_path, tmp_path_factory):
    factory = importlib.import_module(f"tests.engines.factories.{request.param}")
    with factory.make_engine(gemma_path, tmp_path_factory.mktemp(request.param)) as eng:
        yield eng
