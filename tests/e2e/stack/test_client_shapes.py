"""The request shapes of the clients new users bring, recorded from their source, through the whole native stack
(nginx, two API replicas, Redis, a worker beside llama-server on Gemma 3 270M): each gets a valid OpenAI-shaped
answer, or a 400 naming the field the engine cannot serve. One stack for the module.

Sources (read, not guessed):
- Open WebUI, open-webui/open-webui backend/open_webui/routers/openai.py `generate_chat_completion`: pops
  `metadata` from the payload, adds `stream_options: {"include_usage": true}` to a streamed chat, lists models
  with GET {url}/models and reads its `data`; backend/open_webui/routers/tasks.py `generate_title`: one user turn
  holding the title template, `stream: false`, `max_completion_tokens` from the model's `params.max_tokens` (1000
  when unset; here 64, as an admin sets it: 1000 tokens of a base model that never stops take minutes on 2 cores)
  for a model not owned by Ollama.
- Continue, continuedev/continue core/llm/llms/OpenAI.ts: `_convertArgs` (messages, model, max_tokens,
  temperature, top_p, frequency_penalty, presence_penalty, stream true, `stop` unsliced for a host other than
  OpenAI's, Groq's, Azure or port 1337) and `_legacystreamComplete` (the same with `prompt` on /completions);
  the stops are core/autocomplete/templating/AutocompleteTemplate.ts stableCodeFimTemplate's seven (the template
  getTemplateForModel gives a model named like ours) plus getStopTokens.ts's two multiline and three common
  stops: twelve, past OpenAI's four (continuedev/continue#2461).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m"
CONTINUE_STOPS = [
    *("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>", "</fim_middle>", "</code>"),
    *("\n\n", "\r\n\r\n"),
    *("/src/", "#- coding: utf-8", "```"),
]
TITLE_TEMPLATE = (
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
    '### Output:\nJSON format: { "title": "your concise title here" }\n'
    "### Chat History:\n<chat_history>\nUSER: Name three colors.\nASSISTANT: Red, green and blue.\n</chat_history>"
)


@pytest.fixture(scope="module")
def stack() -> Iterator[NativeStack]:
    run = RUN_DIR / f"clients-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
    settings = e2e_settings(run, default_model=MODEL, inference_engine="llama_server", workers=1, default_max_tokens=32)
    with native_stack(settings) as running:
        yield running


@pytest.fixture(scope="module")
def http(stack: NativeStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{stack.url}/v1", headers={"Authorization": "Bearer unused"}, timeout=180) as c:
        yield c


def sse(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_open_webui_lists_models(http: httpx.Client) -> None:
    listed = http.get("/models").json()
    assert listed["object"] == "list" and MODEL in {m["id"] for m in listed["data"]}


def test_open_webui_streamed_chat(http: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 16,
    }
    chunks = sse(http.post("/chat/completions", json=body))
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-") for c in chunks)
    assert any(ch["finish_reason"] for c in chunks for ch in c["choices"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_open_webui_title_generation(http: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": TITLE_TEMPLATE}],
        "stream": False,
        "max_completion_tokens": 64,
    }
    answer = http.post("/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["object"] == "chat.completion" and done["choices"][0]["message"]["role"] == "assistant"
    assert done["choices"][0]["finish_reason"] in ("stop", "length")
    assert isinstance(done["choices"][0]["message"]["content"], str)


def test_continue_chat(http: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "Write a Python function that adds two numbers."}],
        "model": MODEL,
        "max_tokens": 24,
        "temperature": 0.01,
        "top_p": 1,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "stream": True,
        "stop": CONTINUE_STOPS,
    }
    chunks = sse(http.post("/chat/completions", json=body))
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"


def test_continue_autocomplete_with_twelve_stops(http: httpx.Client) -> None:
    prompt = "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))<fim_middle>"
    body = {
        "model": MODEL,
        "max_tokens": 24,
        "temperature": 0.01,
        "stream": True,
        "stop": CONTINUE_STOPS,
        "prompt": prompt,
    }
    chunks = sse(http.post("/completions", json=body))
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(ch["text"] for c in chunks for ch in c["choices"])
    assert not any(stop in text for stop in CONTINUE_STOPS)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_suffix_on_a_model_without_fim_tokens_is_a_400_naming_it(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))", "max_tokens": 8}
    refused = http.post("/completions", json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "suffix"


def test_llama_cpp_grammar_reaches_llama_server(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Is the sky blue?"}], "max_tokens": 4}
    answer = http.post("/chat/completions", json=body | {"grammar": 'root ::= "yes" | "no"'})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] in ("yes", "no")
    refused = http.post("/chat/completions", json=body | {"grammar": "root ::= ((("})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "grammar"
