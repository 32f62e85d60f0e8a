"""`echo` on every engine here, on the real Gemma 3 270M: the prompt first, as one chunk of no tokens, then
exactly what the engine generates without it; with logprobs, the prompt's tokens scored, or a 400 naming
`echo` where the engine cannot score them. The in-process engine's prompt logprobs are checked against
llama-cpp-python's own echo (`create_completion` on a `logits_all` context), computed independently."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from services.common.errors import InvalidRequest
from services.common.jobs import SamplingParams
from services.worker.engines.base import Engine, Finish, GenerationRequest, TokenChunk
from services.worker.engines.llama_cpp import ECHO_BATCH

PROMPT = "Once upon a time"
LONG = " ".join(f"{n}," for n in range(1, 40))  # about 80 tokens: more than one ECHO_BATCH
REFUSES_PROMPT_LOGPROBS = {"llama_server": "echo", "mlx": "logprobs"}
"""The param each engine's 400 names for echo with logprobs (MLX gives no logprobs at all)."""

pytestmark = pytest.mark.engine


def run(engine: Engine, prompt: str = PROMPT, **kw) -> tuple[list[TokenChunk], Finish]:
    params = SamplingParams(**({"max_tokens": 6, "temperature": 0.0} | kw))
    items = list(engine.generate(GenerationRequest("t", prompt, params), lambda: False))
    *chunks, finish = items
    assert isinstance(finish, Finish) and all(isinstance(c, TokenChunk) for c in chunks)
    return chunks, finish  # type: ignore[return-value]


def text(chunks: list[TokenChunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.mark.parametrize("prompt", [PROMPT, LONG])
def test_the_prompt_comes_first_then_the_same_completion(engine: Engine, prompt: str) -> None:
    plain, plain_finish = run(engine, prompt)
    echoed, finish = run(engine, prompt, echo=True)
    assert echoed[0].text == prompt and echoed[0].tokens == 0 and echoed[0].logprobs is None
    assert text(echoed[1:]) == text(plain) and text(echoed) == prompt + text(plain)
    assert (finish.prompt_tokens, finish.completion_tokens) == (
        plain_finish.prompt_tokens,
        plain_finish.completion_tokens,
    )


def test_echo_with_logprobs_scores_the_prompt_or_is_a_400_naming_echo(engine: Engine) -> None:
    if engine.name in REFUSES_PROMPT_LOGPROBS:
        with pytest.raises(InvalidRequest) as refused:
            run(engine, echo=True, logprobs=True, top_logprobs=2)
        assert refused.value.status == 400 and refused.value.param == REFUSES_PROMPT_LOGPROBS[engine.name]
        return
    chunks, finish = run(engine, echo=True, logprobs=True, top_logprobs=2)
    head = chunks[0].logprobs or ()
    assert chunks[0].text == PROMPT and "".join(e["token"] for e in head) == PROMPT
    assert head[0]["logprob"] is None and head[0]["top_logprobs"] is None  # OpenAI's first token: null
    assert len(head) == finish.prompt_tokens - 1  # every prompt token but the BOS we added, which is no text
    for e in head[1:]:
        assert math.isfinite(e["logprob"]) and e["logprob"] <= 0 and len(e["top_logprobs"]) == 2
    generated = [e for c in chunks[1:] for e in c.logprobs or ()]
    assert len(generated) == finish.completion_tokens and "".join(e["token"] for e in generated) == text(chunks[1:])


@pytest.mark.parametrize("prompt", [PROMPT, LONG])
def test_in_process_prompt_logprobs_are_llama_cpp_pythons(gemma_path: Path, prompt: str) -> None:
    """The same numbers as llama-cpp-python's echo, which keeps a logits row for every token of its context;
    ours decodes the prompt ECHO_BATCH tokens at a time, so the long prompt crosses batch edges."""
    from llama_cpp import Llama

    from services.worker.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine(gemma_path, chat_format="gemma", slots=1, n_ctx=512, n_threads=2)
    engine.load()
    try:
        chunks, _ = run(engine, prompt, max_tokens=2, echo=True, logprobs=True, top_logprobs=2)
        again, _ = run(engine, prompt, max_tokens=2)  # the context left behind serves a plain request as ever
    finally:
        engine.unload()
    ours = chunks[0].logprobs or ()
    assert len(ours) > (ECHO_BATCH if prompt == LONG else 2)
    reference = Llama(model_path=str(gemma_path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    try:
        lp = reference.create_completion(prompt, max_tokens=1, echo=True, logprobs=2, temperature=0)["choices"][0]
    finally:
        reference.close()
    theirs = lp["logprobs"]
    n = len(ours)
    assert [e["token"] for e in ours] == theirs["tokens"][:n]
    assert theirs["token_logprobs"][0] is None and ours[0]["logprob"] is None
    for mine, value, top in zip(ours[1:], theirs["token_logprobs"][1:n], theirs["top_logprobs"][1:n], strict=True):
        assert mine["logprob"] == pytest.approx(float(value), abs=1e-3)
        best = sorted(top.items(), key=lambda kv: -kv[1])[:2]
        assert [t["token"] for t in mine["top_logprobs"]] == [t for t, _ in best]
    assert text(chunks[1:]) == text(again)


def test_a_prompt_that_writes_its_bos_echoes_it(engine: Engine) -> None:
    """A chat template may write "<bos>" itself (no BOS is added then): it is text, so it is echoed and scored."""
    if engine.name != "llama_cpp":
        pytest.skip("only the in-process engine scores prompt tokens here")
    chunks, finish = run(engine, "<bos>" + PROMPT, echo=True, logprobs=True)
    head = chunks[0].logprobs or ()
    assert chunks[0].text == "<bos>" + PROMPT and [e["token"] for e in head][:2] == ["<bos>", "Once"]
    assert head[0]["logprob"] is None and all(math.isfinite(e["logprob"]) for e in head[1:])
    assert len(head) == finish.prompt_tokens
