"""OpenAI response bodies, built as plain dicts in OpenAI's field order."""

from __future__ import annotations

from services.common.events import Usage


def chat_completion(rid: str, created: int, model: str, text: str, finish: str, usage: Usage) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage.to_openai(),
        "system_fingerprint": None,
    }


def text_completion(rid: str, created: int, model: str, text: str, finish: str, usage: Usage) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": usage.to_openai(),
        "system_fingerprint": None,
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None, with_usage: bool) -> dict:
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        body["usage"] = None
    return body


def text_chunk(rid: str, created: int, model: str, text: str, finish: str | None, with_usage: bool) -> dict:
    body = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
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
