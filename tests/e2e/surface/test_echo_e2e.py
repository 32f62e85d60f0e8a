"""`echo` through nginx on llama-server, the default engine, with the openai SDK: llama-server ignores `echo`
and scores no prompt token, so the worker echoes the text and `echo` with `logprobs` is a 400 naming `echo`
(streamed too: the refusal comes before the first token, so it is the status)."""

from __future__ import annotations

import openai
import pytest

MODEL = "gemma-3-270m"
PROMPT = "The capital of France is"
pytestmark = pytest.mark.e2e


def test_llama_server_echoes_the_prompt_text(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, stream=True)
    chunks = [c.choices[0].text for c in stream if c.choices]
    assert chunks[0] == PROMPT and "".join(chunks) == echoed.choices[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_llama_server_refuses_echo_with_logprobs_naming_echo(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, echo=True, logprobs=1, stream=stream)
        if stream:
            list(r)
    body = refused.value.body
    assert refused.value.status_code == 400 and body["param"] == "echo" and body["code"] == "unsupported_parameter"
    assert "logprobs" in body["message"] and "llama_server" in body["message"]
