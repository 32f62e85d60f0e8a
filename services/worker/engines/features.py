"""Which request features an engine serves: one that it cannot is a 400 naming the parameter, never a
silent answer without it (prose where a tool call was asked for, free text where JSON was).

Here are the features' names and how a request uses them; which ones an engine serves its module says
(llama_cpp.FEATURES, mlx.FEATURES, and each sidecar's profile: profiles.PROFILES)."""

from __future__ import annotations

from services.common.engine_fields import GUIDED
from services.common.errors import InvalidRequest
from services.common.jobs import SamplingParams

ALL = frozenset(
    {
        "tools",
        "response_format",
        "logprobs",
        "top_logprobs",
        "echo",
        "echo_logprobs",
        "top_k",
        "min_p",
        "repetition_penalty",
        "grammar",
        "cache_prompt",
        "add_generation_prompt",
        "continue_final_message",
        "suffix",
        *GUIDED,
    }
)

PARAM = {"echo_logprobs": "echo"}
"""A feature that is a combination of parameters is refused under the one the engine cannot serve."""

WHAT = {
    "echo_logprobs": "'echo' parameter with 'logprobs' (logprobs of the prompt's tokens)",
    "cache_prompt": "'cache_prompt' parameter set to false",
    "add_generation_prompt": "'add_generation_prompt' parameter set to false",
    "suffix": "'suffix' parameter (fill-in-the-middle)",
}
"""How the 400 names such a feature, so the client learns what to drop."""


def used(params: SamplingParams) -> list[str]:
    """The features a request asks for, in the order a client would read about them."""
    asked = {
        "tools": bool(params.tools) and params.tool_choice != "none",
        "response_format": params.response_format is not None,
        "logprobs": params.logprobs,
        "top_logprobs": params.top_logprobs > 0,
        "echo": params.echo,
        "echo_logprobs": params.echo and params.logprobs,
        "top_k": params.top_k is not None,
        "min_p": params.min_p is not None,
        "repetition_penalty": params.repetition_penalty is not None,
        "grammar": bool(params.grammar),
        "cache_prompt": params.cache_prompt is False,  # true is every engine's own way: reuse what it can
        "add_generation_prompt": params.add_generation_prompt is False,
        "continue_final_message": bool(params.continue_final_message),
        "suffix": bool(params.suffix),
        **{name: name in (params.guided or {}) for name in GUIDED},
    }
    return [name for name, on in asked.items() if on]


def require(params: SamplingParams, engine: str, supported: frozenset[str]) -> None:
    """Raise the 400 for the first feature `engine` does not serve."""
    for name in used(params):
        if name not in supported:
            what = WHAT.get(name, f"'{name}' parameter")
            raise InvalidRequest(
                f"The {what} is not supported by the {engine} engine serving this model.",
                param=PARAM.get(name, name),
                code="unsupported_parameter",
            )
