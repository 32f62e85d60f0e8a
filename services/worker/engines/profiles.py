"""What each OpenAI-compatible sidecar does differently, said once: one SidecarProfile per engine name.

llama.cpp's `llama-server` and `vllm serve` speak the same OpenAI routes but differ at the edges: which
extra routes they have, how they tell the context and the running token count, what they call a sampling
field, which of the engines' own request fields they take, who enforces a forced tool choice and who
echoes the prompt. OpenAIHTTPEngine looks its profile up once, when it is built, and reads these fields;
it never asks which engine it is. A third sidecar is one more entry here.

Error shapes need no entry: both answer `{"error": {...}}` (older vLLM a flat `{"message", ...}`) and
upstream.py reads either, with llama-server's context error (n_prompt_tokens, n_ctx) recognised by its fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from services.common.engine_fields import GUIDED
from services.worker.engines.base import EngineUnavailable
from services.worker.engines.features import ALL


@dataclass(frozen=True)
class SidecarProfile:
    """One sidecar engine's differences from plain OpenAI, as data the engine reads."""

    supports: frozenset[str]
    """The request features it serves (features.py's names); any other one asked for is a 400 naming it."""
    context_route: str | None
    """Where it tells the tokens one request may use when /v1/models has no `max_model_len` (vLLM's way):
    llama-server's /props, whose per-slot n_ctx is the real limit (the model's is larger)."""
    infill_route: str | None
    """Its fill-in-the-middle route (a completion's `suffix`), which answers native chunks (payload.infill_event)."""
    template_route: str | None
    """Its route that renders the chat template to a prompt; None: it templates only inside its chat route."""
    tokenize_body: Callable[[str, str | None, bool], dict[str, Any]]
    """Its /tokenize request for (text, model, add_special)."""
    running_count: Mapping[str, Any]
    """Body fields that make it send the running token count (and the prompt's size) on every chunk, so
    each chunk is charged its exact tokens (upstream.CompletionStream)..."""
    stream_options: Mapping[str, Any]
    """...or the `stream_options` that do, beside include_usage."""
    neutral_sampling: Callable[[float], Mapping[str, Any]]
    """Body fields (given the temperature) that turn its own sampling defaults off where they would
    truncate what OpenAI's parameters describe."""
    top_k_off: int
    """The top_k that means "off" to it; a lower one is sent as this."""
    repetition_penalty_field: str
    """What it calls OpenAI-style clients' `repetition_penalty`."""
    own_fields: tuple[str, ...]
    """The engines' own request fields (common/engine_fields.py) it reads, sent as they are when set."""
    completion_json_schema: bool
    """Its /v1/completions ignores response_format and reads only its own top-level `json_schema`."""
    enforces_tool_choice: bool
    """It decodes a forced tool choice itself; if not, forced_tools.py sends it as a JSON schema."""
    echoes: bool
    """It echoes (and scores) the prompt on /v1/completions when asked; if not, echo.py puts the text in front."""
    url_setting: str
    """The Settings field that says where it listens."""
    key_setting: str | None
    """The Settings field holding the API key it wants (None: it is not started by us and wants none)."""


def _llama_server_tokenize(text: str, model: str | None, add_special: bool) -> dict[str, Any]:
    return {"content": text, "add_special": add_special, "parse_special": True}


def _vllm_tokenize(text: str, model: str | None, add_special: bool) -> dict[str, Any]:
    return {"model": model, "prompt": text, "add_special_tokens": add_special}


def _llama_server_sampling(temperature: float) -> Mapping[str, Any]:
    """llama-server's own top_k=40 and min_p=0.05 truncate what OpenAI's parameters describe, so sampling
    turns them off. Greedy decoding keeps the argmax whatever they are, and there top_k=1 spares it a pass
    over Gemma's 262k-token vocabulary per token: the neutral pair cost 20 % of the tokens/s at 8 clients
    on 2 cores (75 -> 59), top_k=1 none."""
    if temperature <= 0:
        return {"top_k": 1}
    return {"top_k": 0, "min_p": 0.0}


def _as_sent(temperature: float) -> Mapping[str, Any]:
    """vLLM's defaults are already neutral."""
    return {}


PROFILES: Mapping[str, SidecarProfile] = MappingProxyType(
    {
        "llama_server": SidecarProfile(
            supports=ALL - {"echo_logprobs", *GUIDED},
            context_route="/props",
            infill_route="/infill",
            template_route="/apply-template",
            tokenize_body=_llama_server_tokenize,
            running_count=MappingProxyType({"timings_per_token": True}),  # cumulative timings.predicted_n
            stream_options=MappingProxyType({}),
            neutral_sampling=_llama_server_sampling,
            top_k_off=0,
            repetition_penalty_field="repeat_penalty",
            own_fields=("grammar", "cache_prompt"),
            completion_json_schema=True,
            enforces_tool_choice=False,
            echoes=False,
            url_setting="llama_server_url",
            key_setting="llama_server_api_key",
        ),
        "vllm": SidecarProfile(
            supports=ALL - {"grammar", "cache_prompt", "suffix"},
            context_route=None,
            infill_route=None,
            template_route=None,
            tokenize_body=_vllm_tokenize,
            running_count=MappingProxyType({}),
            stream_options=MappingProxyType({"continuous_usage_stats": True}),  # the running count as usage
            neutral_sampling=_as_sent,
            top_k_off=-1,
            repetition_penalty_field="repetition_penalty",
            own_fields=GUIDED,
            completion_json_schema=False,
            enforces_tool_choice=True,
            echoes=True,
            url_setting="vllm_url",
            key_setting=None,
        ),
    }
)
"""llama-server gives logprobs only for the tokens it samples, never for the prompt's, and ignores `echo`
on /v1/completions; vLLM echoes the prompt and scores its tokens (its prompt_logprobs). Each takes its own
constrained decoding (llama.cpp's GBNF `grammar`, vLLM's `guided_*`), not the other's; vLLM has no
per-request switch for its prefix cache and refuses `suffix`; llama-server's /infill needs FIM tokens
(openai_http.py answers the 400 for a model without them)."""


def profile_for(name: str) -> SidecarProfile:
    """The profile of sidecar engine `name`; an unknown one cannot be served."""
    try:
        return PROFILES[name]
    except KeyError:
        raise EngineUnavailable(f"no sidecar engine {name!r}; choose one of {', '.join(PROFILES)}") from None
