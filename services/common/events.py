"""Events a worker appends to a request's Redis Stream, and their encoding as stream fields.

One format for streaming and non-streaming: the API aggregates the same events for a JSON body.
Timing points (dequeued, first token, done) travel in the events so the API can observe them.
"""

from __future__ import annotations

import array
import base64
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class Started:
    """The job left the queue: a worker slot took it."""

    worker: str
    dequeued_at: float
    kind: Literal["started"] = "started"


@dataclass(frozen=True)
class Delta:
    """Text generated since the last delta, and how many tokens it took.

    Workers batch what a slot produced between flushes into one delta; `pieces` then keeps the
    engine's chunks (about one token each, joined they are `text`) so the API can still write one
    SSE chunk per token as OpenAI does. None when the delta is a single piece: `text` says it all,
    and a reader that ignores `pieces` still gets the right text.
    """

    text: str
    tokens: int
    pieces: tuple[str, ...] | None = None
    tool_calls: tuple[dict, ...] | None = None
    """OpenAI's streamed tool_calls deltas ({index, id?, type?, function: {name?, arguments}})."""
    logprobs: tuple[dict, ...] | None = None
    """OpenAI's chat logprobs entries ({token, logprob, bytes, top_logprobs}) of this delta's tokens.
    A delta with either is written alone (never batched), so `pieces` is None there."""
    kind: Literal["delta"] = "delta"

    def chunks(self) -> tuple[str, ...]:
        """The texts to send one by one: the pieces, or the text as one (empty ones left out)."""
        if self.pieces is not None:
            return tuple(p for p in self.pieces if p)
        return (self.text,) if self.text else ()


@dataclass(frozen=True)
class Embedded:
    """An embedding job's vectors, in input order, each little-endian float32 in base64 (OpenAI's base64
    encoding_format): about a quarter of the JSON floats' size in Redis, and exact. `done` follows with the usage."""

    vectors: tuple[str, ...]
    kind: Literal["embedded"] = "embedded"


@dataclass(frozen=True)
class Done:
    finish_reason: Literal["stop", "length", "tool_calls"]
    usage: Usage
    timings: dict[str, float] = field(default_factory=dict)
    kind: Literal["done"] = "done"


@dataclass(frozen=True)
class Failed:
    """The request failed: `status` and `type` become the OpenAI error the client sees."""

    message: str
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    status: int = 500
    kind: Literal["error"] = "error"


Event = Started | Delta | Embedded | Done | Failed


def pack_vector(vector: list[float]) -> str:
    """Little-endian float32 in base64: how `Embedded` carries a vector and OpenAI's base64 format sends it."""
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode()


def unpack_vector(packed: str) -> list[float]:
    """Inverse of `pack_vector`: the float32 values as Python floats (encoding_format=float)."""
    values = array.array("f", base64.b64decode(packed))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def encode(event: Event) -> dict[str, str]:
    """Stream fields for one event (`kind` plus a JSON body)."""
    if isinstance(event, Delta) and event.tool_calls is None and event.logprobs is None:
        # the hot path (every batch of every stream): asdict's deep copy cost more than the JSON itself
        plain: dict = {"text": event.text, "tokens": event.tokens}
        if event.pieces is not None:
            plain["pieces"] = event.pieces
        return {"kind": "delta", "data": json.dumps(plain, separators=(",", ":"))}
    body = asdict(event)
    kind = body.pop("kind")
    if kind == "delta":
        for name in ("pieces", "tool_calls", "logprobs"):
            if body[name] is None:
                del body[name]  # the common single-token delta stays as small as it always was
    return {"kind": kind, "data": json.dumps(body, separators=(",", ":"))}


def decode(fields: dict[bytes | str, bytes | str]) -> Event:
    """Inverse of `encode`; accepts the bytes redis-py returns."""
    norm = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    data = json.loads(norm["data"])
    kind = norm["kind"]
    if kind == "delta":
        extras = {k: tuple(data.pop(k)) for k in ("pieces", "tool_calls", "logprobs") if data.get(k) is not None}
        data.pop("pieces", None)
        return Delta(**data, **extras)
    if kind == "done":
        return Done(finish_reason=data["finish_reason"], usage=Usage(**data["usage"]), timings=data["timings"])
    if kind == "error":
        return Failed(**data)
    if kind == "started":
        return Started(**data)
    if kind == "embedded":
        return Embedded(vectors=tuple(data["vectors"]))
    raise ValueError(f"unknown event kind {kind!r}")
