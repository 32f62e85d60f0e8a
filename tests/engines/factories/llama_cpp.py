"""In-process llama.cpp on the real Gemma GGUF, two slots so concurrency is exercised."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from services.worker.engines.base import Engine
from services.worker.engines.llama_cpp import LlamaCppEngine


@contextlib.contextmanager
def make_engine(gemma_path: Path, workdir: Path) -> Iterator[Engine]:
    engine = LlamaCppEngine(gemma_path, chat_format="gemma", slots=2, n_ctx=1024, n_threads=1)
    engine.load()
    try:
        yield engine
    finally:
        engine.unload()
