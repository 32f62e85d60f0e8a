"""tool_choice "required" or a named function, enforced with a JSON schema (vLLM's way of doing it).

llama-server's own grammar for "required" lets the model write any prose before the call: a small model
wrote 150 tokens of prose and no call (SmolLM2 135M, measured). A JSON schema cannot be ignored: for a
named function (or the only tool) the output *is* the arguments object, streamed as argument deltas;
for a choice among several tools it is vLLM's array of {name, arguments}, turned into calls at the end.
Any engine with JSON-schema decoding (llama-server's response_format, llama.cpp's grammar) can use it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from services.common.jobs import SamplingParams
from services.worker.engines.base import EngineError, Finish, GenerationItem, TokenChunk


def call_id() -> str:
    """OpenAI's shape of a tool call id."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


class ForcedTools:
    """One request's forced tool choice: the schema to decode with and the translation of what comes out."""

    def __init__(self, params: SamplingParams) -> None:
        choice = params.tool_choice
        tools = list(params.tools)
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            tools = [t for t in tools if t["function"]["name"] == name]
        self.tools = tools
        self.parallel = params.parallel_tool_calls
        self.single = tools[0] if len(tools) == 1 else None
        """Named, or "required" with one tool: the output is that function's arguments, streamed."""

    @classmethod
    def of(cls, params: SamplingParams) -> ForcedTools | None:
        """A ForcedTools when the request forces a call, else None (auto, none: the engine's own parsing)."""
        if not params.tools or params.tool_choice in (None, "auto", "none"):
            return None
        return cls(params)

    def schema(self) -> dict[str, Any]:
        if self.single is not None:
            return _parameters(self.single)
        call = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": t["function"]["name"]}, "arguments": _parameters(t)},
                    "required": ["name", "arguments"],
                }
                for t in self.tools
            ]
        }
        array: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
        if not self.parallel:
            array["maxItems"] = 1
        return array

    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": self.schema(), "strict": True}}

    def translate(self, items: Iterator[GenerationItem]) -> Iterator[GenerationItem]:
        """The engine's JSON text as tool-call deltas, and finish_reason `tool_calls` once it is whole."""
        return self._stream_single(items) if self.single is not None else self._collect_many(items)

    def _stream_single(self, items: Iterator[GenerationItem]) -> Iterator[GenerationItem]:
        name = self.single["function"]["name"] if self.single else ""
        head = {"index": 0, "id": call_id(), "type": "function", "function": {"name": name, "arguments": ""}}
        opened = False
        for item in items:
            if isinstance(item, TokenChunk):
                call = None
                if not opened:  # the first delta names the call, as OpenAI's does, with the first arguments
                    call = {**head, "function": {"name": name, "arguments": item.text}}
                    opened = True
                elif item.text:
                    call = {"index": 0, "function": {"arguments": item.text}}
                yield TokenChunk("", item.tokens, tool_calls=(call,) if call else None, logprobs=item.logprobs)
            else:
                if not opened:
                    yield TokenChunk("", 0, tool_calls=(head,))
                yield _finished(item)

    def _collect_many(self, items: Iterator[GenerationItem]) -> Iterator[GenerationItem]:
        parts: list[str] = []
        tokens = 0
        for item in items:
            if isinstance(item, TokenChunk):
                parts.append(item.text)
                tokens += item.tokens
                continue
            if item.reason == "length":  # cut short: the JSON is not whole, so no calls can be made of it
                yield TokenChunk("".join(parts), tokens)
                yield item
                return
            try:
                calls = json.loads("".join(parts))
            except ValueError as exc:
                raise EngineError(f"the engine broke the tool-call schema: {exc}") from exc
            deltas = tuple(
                {
                    "index": i,
                    "id": call_id(),
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
                }
                for i, c in enumerate(calls)
            )
            yield TokenChunk("", tokens, tool_calls=deltas)
            yield _finished(item)


def _finished(finish: Finish) -> Finish:
    if finish.reason == "length":
        return finish
    return Finish("tool_calls", finish.prompt_tokens, finish.completion_tokens)
