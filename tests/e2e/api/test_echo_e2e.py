"""`echo` on /v1/completions through the API and a worker running the in-process llama.cpp engine, driven by
the official openai SDK: the prompt heads the text (streamed: the first chunk), and with `logprobs` the
prompt's tokens head the logprobs, scored by the model (the first null, as OpenAI writes it)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.v1(), api_key="unused", max_retries=0, timeout=120)


def test_echo_puts_the_prompt_before_the_completion(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage == plain.usage  # the echo is the prompt, already counted as such


def test_echo_with_logprobs_scores_the_prompt_tokens_first(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2, echo=True)
    choice, lp = r.choices[0], r.choices[0].logprobs
    prompt_count = r.usage.prompt_tokens - 1  # the BOS the engine adds is no text of the prompt
    assert len(lp.tokens) == prompt_count + r.usage.completion_tokens
    assert "".join(lp.tokens) == choice.text and choice.text.startswith(PROMPT)
    assert "".join(lp.tokens[:prompt_count]) == PROMPT
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for value, top in zip(lp.token_logprobs[1:prompt_count], lp.top_logprobs[1:prompt_count], strict=True):
        assert isinstance(value, float) and math.isfinite(value) and value <= 0
        assert len(top) == 2 and all(math.isfinite(v) for v in top.values())
    assert len(set(lp.token_logprobs[1:prompt_count])) > 1  # real distributions, no placeholder
    offsets = [0]
    for token in lp.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp.text_offset == offsets  # into the whole text, the prompt's first character at 0
    assert lp.tokens[prompt_count:] == plain.choices[0].logprobs.tokens
    assert lp.token_logprobs[prompt_count:] == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-6)


def test_a_streamed_echo_sends_the_prompt_in_the_first_chunk(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    chunks = list(
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, echo=True, stream=True)
    )
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_streamed_echo_with_logprobs(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1, stream=True
    )
    chunks = [c for c in stream if c.choices[0].text]
    first = chunks[0].choices[0]
    assert first.text == PROMPT and "".join(first.logprobs.tokens) == PROMPT
    assert first.logprobs.token_logprobs[0] is None and first.logprobs.text_offset[0] == 0
    assert all(math.isfinite(v) for v in first.logprobs.token_logprobs[1:])
    after = chunks[1].choices[0].logprobs
    assert after.text_offset[0] == len(PROMPT) and math.isfinite(after.token_logprobs[0])


def test_each_prompt_of_a_list_is_echoed_in_its_choices(client: openai.OpenAI) -> None:
    prompts = ["1, 2, 3,", PROMPT]
    r = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=3, temperature=0, echo=True)
    assert [c.text.startswith(prompts[c.index // 2]) for c in r.choices] == [True] * 4


def test_echo_is_json_null_where_openai_writes_null(api) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0}
    r = httpx.post(f"{api.v1()}/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"][0] == "Hello" and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["top_logprobs"][1:] == [{}]  # logprobs=0: the sampled token's value, no alternatives
