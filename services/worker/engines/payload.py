"""What a sidecar is sent: one GenerationRequest as the JSON body of its OpenAI route (or llama-server's /infill),
shaped by the sidecar's profile (profiles.py), and /infill's native chunks read back in the OpenAI shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common.jobs import ChatMessage, SamplingParams
from services.worker.engines.base import GenerationRequest
from services.worker.engines.forced_tools import ForcedTools
from services.worker.engines.profiles import SidecarProfile


def body(
    request: GenerationRequest,
    max_tokens: int,
    profile: SidecarProfile,
    model: str | None,
    forced: ForcedTools | None = None,
) -> dict[str, Any]:
    """The streamed /v1/chat/completions (or /v1/completions) body for `request` on a sidecar like `profile`."""
    p = request.params
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "stream": True,
        "stream_options": {"include_usage": True, **profile.stream_options},
    }
    if p.stop:
        out["stop"] = list(p.stop)
    if p.seed is not None:
        out["seed"] = p.seed
    if request.messages:
        out["messages"] = messages(request.messages)
    else:
        out["prompt"] = request.prompt
    out |= profile.running_count
    out |= profile.neutral_sampling(p.temperature)
    out |= _extras(p, profile)
    out |= _decoding(p, bool(request.messages), forced, profile)
    out |= own_fields(p, bool(request.messages), profile)
    return out


def _extras(p: SamplingParams, profile: SidecarProfile) -> dict[str, Any]:
    """Vendor sampling extras under each server's own names (llama-server says repeat_penalty)."""
    out: dict[str, Any] = {}
    if p.top_k is not None:
        out["top_k"] = max(p.top_k, profile.top_k_off)
    if p.min_p is not None:
        out["min_p"] = p.min_p
    if p.repetition_penalty is not None:
        out[profile.repetition_penalty_field] = p.repetition_penalty
    return out


def _decoding(p: SamplingParams, chat: bool, forced: ForcedTools | None, profile: SidecarProfile) -> dict[str, Any]:
    """logprobs, response_format and tools as OpenAI spells them: both sidecars read them so.
    A forced tool choice is sent as its JSON schema instead, the tools still shown to the template."""
    out: dict[str, Any] = {}
    if p.logprobs:
        if chat:
            out |= {"logprobs": True, "top_logprobs": p.top_logprobs}
        else:
            out["logprobs"] = p.top_logprobs  # the legacy completions parameter: how many alternatives
    if p.echo and profile.echoes:
        out["echo"] = True  # the prompt comes back (scored, with logprobs) in the first chunk
    if p.response_format is not None:
        out["response_format"] = p.response_format
        if not chat and profile.completion_json_schema:
            out["json_schema"] = (p.response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
    if p.tools:
        out["tools"] = list(forced.tools if forced else p.tools)
        if forced is not None:
            out["response_format"] = forced.response_format()
        elif p.tool_choice is not None:
            out["tool_choice"] = p.tool_choice
            out["parallel_tool_calls"] = p.parallel_tool_calls
    return out


def own_fields(p: SamplingParams, chat: bool, profile: SidecarProfile) -> dict[str, Any]:
    """The engines' own fields, under the names each reads (features.py has refused what it does not take)."""
    out: dict[str, Any] = {}
    if chat:
        for name in ("add_generation_prompt", "continue_final_message"):
            if getattr(p, name) is not None:
                out[name] = getattr(p, name)
    given = {"grammar": p.grammar or None, "cache_prompt": p.cache_prompt, **(p.guided or {})}
    return out | {name: value for name, value in given.items() if name in profile.own_fields and value is not None}


def infill_body(body: dict[str, Any], suffix: str) -> dict[str, Any]:
    """llama-server's /infill request for a completion with a suffix: the prompt is the code before the hole.
    /infill takes every /completion option, so the OpenAI body's sampling fields stay as they are."""
    out = {k: v for k, v in body.items() if k not in ("prompt", "model", "stream_options", "max_tokens", "logprobs")}
    return out | {"input_prefix": body["prompt"], "input_suffix": suffix, "n_predict": body["max_tokens"]}


def infill_event(event: dict[str, Any]) -> dict[str, Any]:
    """One of /infill's native chunks ({content, stop, stop_type, timings, tokens_predicted}) in the OpenAI shape
    CompletionStream reads: the text as a choice, the end as its finish_reason, the counts as usage."""
    if "error" in event:
        return event
    choice: dict[str, Any] = {"text": event.get("content") or "", "finish_reason": None}
    out: dict[str, Any] = {"choices": [choice]}
    if event.get("timings"):
        out["timings"] = event["timings"]
    if event.get("stop"):
        choice["finish_reason"] = "length" if event.get("stop_type") == "limit" else "stop"
        if "tokens_predicted" in event:
            out["usage"] = {
                "prompt_tokens": int(event.get("tokens_evaluated") or 0),
                "completion_tokens": int(event["tokens_predicted"]),
            }
    return out


def messages(turns: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI's message shapes: an assistant turn's tool calls (content null without text), a tool result's id."""
    out: list[dict[str, Any]] = []
    for m in turns:
        turn: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            turn["tool_calls"] = list(m.tool_calls)
            turn["content"] = m.content or None
        if m.tool_call_id is not None:
            turn["tool_call_id"] = m.tool_call_id
        out.append(turn)
    return out
