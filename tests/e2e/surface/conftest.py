"""The native stack as `make up` runs it (nginx, two API replicas, Redis, the Gemma worker and the embedding
worker, each with its own llama-server, --embeddings for the latter) plus a worker for SmolLM2, the chat
model with a tools template. CORS is on for one origin."""

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
CHAT = "smollm2-135m-instruct"
ORIGIN = "https://app.example.com"
MINILM = ROOT / "models" / "all-minilm-l6-v2-f16.gguf"
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def extra_worker(stack: NativeStack, model: str, name: str):
    """A worker for `model` with its own llama-server child on its own port."""
    env = dict(stack.stack.proc("worker").env)
    env |= {
        "LLAMA_SERVER_PORT": str(free_port()),
        "LLAMA_SERVER_PARALLEL": "2",
        "LOG_DIR": str(stack.settings.run_dir / f"logs-{name}"),
    }
    argv = [sys.executable, "-m", "services.worker", "--model", model, "--slots", "2"]
    argv += ["--metrics-port", "0", "--spawn-llama-server"]
    return spawn(Proc(name, tuple(argv), env), stack.log(name))


def serves(url: str, model: str) -> bool:
    return any(m["id"] == model for m in httpx.get(f"{url}/v1/models", timeout=5).json().get("data", []))


@pytest.fixture(scope="package")
def stack(gemma_path: object) -> Iterator[NativeStack]:
    for path in (MINILM, SMOLLM2):
        if not path.exists():
            pytest.fail(f"{path} is missing: run `make models` (make test does)")
    run = RUN_DIR / f"surface-{time.strftime('%H%M%S')}"
    settings = e2e_settings(run, cors_origins=ORIGIN, max_n=8, embedding_model=EMBEDDER)
    with native_stack(settings) as running:
        assert "embedder" in running.procs, "the stack starts the embedding worker itself"
        chat = extra_worker(running, CHAT, "chat")
        try:
            wait_until(lambda: serves(running.url, EMBEDDER), 120, "the embedding worker", running.procs["embedder"])
            wait_until(lambda: serves(running.url, CHAT), 120, "the chat worker", chat)
            yield running
        finally:
            stop(chat)


@pytest.fixture(scope="package")
def client(stack: NativeStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
