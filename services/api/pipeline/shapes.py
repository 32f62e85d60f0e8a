"""OpenAI response bodies, built as plain dicts in OpenAI's field order."""

from __future__ import annotations

from services.common.events import Usage


def chat_completion(
    rid: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    usage: Usage,
    tool_calls: list[dict] | None = None,
    logprobs: list[dict] | None = None,
) -> dict:
    message: dict = {"role": "assistant", "content": text or (None if tool_calls else text), "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(logprobs),
                "finish_reason": finish,
            }
        ],
        "usage": usage.to_openai(),
        "system_fingerprint": None,
    }


def text_completion(
    rid: str, created: int, model: str, text: str, finish: str, usage: Usage, logprobs: list[dict] | None = None
) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": text_logprobs(logprobs), "finish_reason": finish}],
        "usage": usage.to_openai(),
        "system_fingerprint": None,
    }


def chat_logprobs(entries: list[dict] | tuple[dict, ...] | None) -> dict | None:
    """A chat choice's logprobs: {"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}."""
    return None if entries is None else {"content": list(entries), "refusal": None}


def text_logprobs(entries: list[dict] | tuple[dict, ...] | None, offset: int = 0) -> dict | None:
    """The legacy completions shape of the same entries: parallel lists, offsets into the choice's text
    (the echoed prompt's first, when echo is on). An echoed prompt's first token has no value and no
    alternatives: null, as OpenAI writes it, where a generated token without alternatives has {}."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [_alternatives(e) for e in entries],
        "text_offset": offsets,
    }


def _alternatives(entry: dict) -> dict[str, float] | None:
    if entry["logprob"] is None:  # however the engine wrote them (vLLM's legacy lists arrive as [])
        return None
    return {t["token"]: t["logprob"] for t in entry.get("top_logprobs") or ()}


def merge_tool_calls(calls: list[dict], deltas: tuple[dict, ...]) -> None:
    """Fold streamed tool-call deltas into whole calls, by index, as the SDKs do: arguments concatenate."""
    for delta in deltas:
        index = delta.get("index", 0)
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call, fn = calls[index], delta.get("function") or {}
        call["id"] = delta.get("id") or call["id"]
        call["function"]["name"] = fn.get("name") or call["function"]["name"]
        call["function"]["arguments"] += fn.get("arguments") or ""


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    delta: dict,
    finish: str | None,
    with_usage: bool,
    logprobs: tuple[dict, ...] | None = None,
) -> dict:
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": chat_logprobs(logprobs), "finish_reason": finish}],
    }
    if with_usage:
        body["usage"] = None
    return body


def text_chunk(
    rid: str,
    created: int,
    model: str,
    text: str,
    finish: str | None,
    with_usage: bool,
    logprobs: dict | None = None,
) -> dict:
    body = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
    }
    if with_usage:
        body["usage"] = None
    return body


def usage_chunk(rid: str, created: int, model: str, obj: str, usage: Usage) -> dict:
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": usage.to_openai(),
    }


def model_card(model_id: str, created: int, owned_by: str = "organization-owner") -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
