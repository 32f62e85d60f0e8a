"""The engines' own request fields that their users send through OpenAI clients, turned into SamplingParams.

llama.cpp's users send `grammar`, a top-level `json_schema`, `n_probs`, `cache_prompt` (llama-server's
/completion options, which its OpenAI routes read too); vLLM's send `guided_json` / `guided_regex` /
`guided_choice` / `guided_grammar` and `structured_outputs`; both send `add_generation_prompt` /
`continue_final_message`. None of them is ignored: each travels to the worker, whose engine passes it on,
serves it itself, or answers a 400 naming it (worker/engines/features.py). What means the same as an
OpenAI parameter becomes that parameter here, so every engine that honours the one honours the other:
a bare JSON schema (`json_schema`, a `schema` in response_format) is a json_schema response_format, and
`n_probs` is logprobs with that many alternatives.
"""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidRequest
from services.common.schemas import _SamplingBody, schema_format

GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")
"""vLLM's constrained decoding fields, passed to vLLM as sent (it validates them)."""

MAX_COMPLETION_LOGPROBS = 5


def sampling(body: _SamplingBody, *, chat: bool) -> dict[str, Any]:
    """SamplingParams keyword arguments for the engine fields `body` carries (none: an empty dict)."""
    out: dict[str, Any] = {}
    response_format = getattr(body, "response_format", None)
    constrained = (response_format is not None and response_format.type != "text") or bool(
        getattr(body, "tools", None) and getattr(body, "tool_choice", None) != "none"
    )
    if body.json_schema is not None:
        if constrained:
            raise InvalidRequest("json_schema cannot be combined with response_format or tools.", param="json_schema")
        out["response_format"] = schema_format(body.json_schema)
        constrained = True
    if body.grammar:
        if constrained:
            raise InvalidRequest(
                "grammar cannot be combined with json_schema, response_format or tools: send one of them.",
                param="grammar",
            )
        out["grammar"] = body.grammar
    if body.n_probs:
        out |= _n_probs(body, body.n_probs, chat)
    if body.cache_prompt is not None:
        out["cache_prompt"] = body.cache_prompt
    guided = {name: getattr(body, name) for name in GUIDED if getattr(body, name) is not None}
    if guided:
        out["guided"] = guided
    for name in ("add_generation_prompt", "continue_final_message"):
        if getattr(body, name, None) is not None:
            out[name] = getattr(body, name)
    if out.get("add_generation_prompt") and out.get("continue_final_message"):
        raise InvalidRequest(
            "Cannot set both add_generation_prompt and continue_final_message to true.", param="continue_final_message"
        )
    suffix = getattr(body, "suffix", None)
    if suffix:
        out["suffix"] = suffix
    return out


def _n_probs(body: _SamplingBody, n: int, chat: bool) -> dict[str, Any]:
    """llama-server's n_probs is OpenAI's logprobs with n alternatives (its OpenAI routes answer so)."""
    if chat:
        top = getattr(body, "top_logprobs", None)
        if top is not None and top != n:
            raise InvalidRequest(f"n_probs ({n}) and top_logprobs ({top}) disagree: send one of them.", param="n_probs")
        return {"logprobs": True, "top_logprobs": n}
    if n > MAX_COMPLETION_LOGPROBS:
        raise InvalidRequest(
            f"Invalid value for 'n_probs': at most {MAX_COMPLETION_LOGPROBS} on /v1/completions (as 'logprobs').",
            param="n_probs",
        )
    asked = getattr(body, "logprobs", None)
    if asked is not None and asked != n:
        raise InvalidRequest(f"n_probs ({n}) and logprobs ({asked}) disagree: send one of them.", param="n_probs")
    return {"logprobs": True, "top_logprobs": n}
