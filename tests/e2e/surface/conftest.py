"""The native stack (nginx, two API replicas, Redis, the Gemma worker on its llama-server) plus a second
worker serving the embedding model on its own llama-server --embeddings, with CORS on for one origin."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from services.common.ports import free_port
from services.stack.procfile import Proc
from tests.conftest import ROOT, RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack, spawn
from tests.support.procs import stop, wait_until

EMBEDDER = "all-minilm-l6-v2"
ORIGIN = "https://app.example.com"
MINILM = ROOT / "models" / "all-minilm-l6-v2-f16.gguf"


def embedding_worker(stack: NativeStack):
    """The worker `make up` would run for the embedding model: its own llama-server child, own ports."""
    env = dict(stack.stack.proc("worker").env)
    env |= {
        "LLAMA_SERVER_PORT": str(free_port()),
        "LLAMA_SERVER_PARALLEL": "2",
        "LOG_DIR": str(stack.settings.run_dir / "logs-embedder"),
    }
    argv = [sys.executable, "-m", "services.worker", "--model", EMBEDDER, "--slots", "2"]
    argv += ["--metrics-port", "0", "--spawn-llama-server"]
    return spawn(Proc("embedder", tuple(argv), env), stack.log("embedder"))


def serves(url: str, model: str) -> bool:
    return any(m["id"] == model for m in httpx.get(f"{url}/v1/models", timeout=5).json().get("data", []))


@pytest.fixture(scope="package")
def stack(gemma_path: object) -> Iterator[NativeStack]:
    if not MINILM.exists():
        pytest.fail(f"{MINILM} is missing: run `make models` (make test does)")
    settings = e2e_settings(RUN_DIR / f"surface-{time.strftime('%H%M%S')}", cors_origins=ORIGIN, max_n=8)
    with native_stack(settings) as running:
        embedder = embedding_worker(running)
        try:
            wait_until(lambda: serves(running.url, EMBEDDER), 120, "the embedding worker", embedder)
            yield running
        finally:
            stop(embedder)


@pytest.fixture(scope="package")
def client(stack: NativeStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
