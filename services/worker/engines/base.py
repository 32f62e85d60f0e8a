"""The one contract every engine keeps, in-process (llama.cpp, MLX) or over HTTP (vLLM, llama-server).

A worker slot calls `generate()` from its own thread; an engine with `capacity() > 1` must accept
that many concurrent calls (a pool of contexts, a batch loop, or concurrent HTTP streams).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from services.common.errors import APIError, InvalidRequest
from services.common.jobs import ChatMessage, SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: a prompt (a completion, or a chat the runner templated) plus sampling parameters."""

    request_id: str
    prompt: str
    params: SamplingParams
    messages: tuple[ChatMessage, ...] = ()
    """The chat; an engine with `templates_chat` gets it with an empty prompt and templates it itself."""
    before_wait: Callable[[bool], None] | None = None
    """For an engine that reads its output from a socket: called before each wait for more. With True
    (it will sleep a tick) the runner writes what it holds now, from this thread; with False (it waits
    for data as it comes) the flusher's thread writes it within its hold. Either way no other wake-up."""


@dataclass(frozen=True)
class TokenChunk:
    """Text produced since the previous chunk and how many tokens it took."""

    text: str
    tokens: int
    tool_calls: tuple[dict, ...] | None = None
    """Streamed tool-call deltas in OpenAI's shape (index, then id/type/name once, arguments in pieces)."""
    logprobs: tuple[dict, ...] | None = None
    """OpenAI chat logprobs entries for this chunk's tokens, when the request asked for them."""


@dataclass(frozen=True)
class Finish:
    """The last item of every generation."""

    reason: Literal["stop", "length", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int


GenerationItem = TokenChunk | Finish
CancelCheck = Callable[[], bool]


class EngineUnavailable(RuntimeError):
    """The engine cannot serve this model here; the message says why (for auto's fallback log)."""


class EngineError(APIError):
    """The engine failed for a reason that is not the client's fault."""

    status = 500
    type = "server_error"
    code = "engine_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


@runtime_checkable
class Engine(Protocol):
    """Load once, generate many times, report capacity; `name` labels metrics."""

    name: str
    templates_chat: bool
    """True when `generate` takes a chat's messages and templates them itself (an HTTP sidecar's chat
    endpoint, which would template again anyway): the runner then skips `apply_chat_template`."""
    calls_before_wait: bool
    """True when `generate` calls the request's `before_wait` before each wait for output, the first right
    after the request went out (a sidecar's stream): the runner then writes `started` there, while the
    sidecar already reads the prompt, instead of before it."""

    def load(self) -> None:
        """Load weights or connect to the sidecar; raise if the model cannot be served."""

    def unload(self) -> None:
        """Free what `load` took."""

    def capacity(self) -> int:
        """How many `generate` calls may run at once."""

    def context_length(self) -> int:
        """Prompt plus completion tokens one request may use."""

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer."""

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt the model expects for a chat, ending where the assistant's turn begins."""

    def generate(self, request: GenerationRequest, cancelled: CancelCheck) -> Iterator[GenerationItem]:
        """Stream TokenChunks, then one Finish. Stop early (reason 'stop') once `cancelled()` is true."""


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, in input order, and the tokens the inputs took."""

    vectors: list[list[float]]
    prompt_tokens: int


@runtime_checkable
class Embedder(Protocol):
    """An engine that embeds (llama-server started with --embeddings, vLLM serving an embedding model).
    A separate Protocol: generating engines need not grow a method they cannot serve."""

    def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """Vectors for `inputs` (texts, or token id arrays), as the model pools and normalizes them."""


def clamp_max_tokens(params: SamplingParams, prompt_tokens: int, context: int) -> int:
    """Tokens this request may generate: an explicit max_tokens that overflows the context is a 400,
    a defaulted one is cut to what fits."""
    room = context - prompt_tokens
    if room <= 0:
        raise prompt_too_long(prompt_tokens, context)
    if params.max_tokens > room:
        if params.max_tokens_explicit:
            raise completion_too_long(prompt_tokens, params.max_tokens, context)
        return room
    return params.max_tokens


def prompt_too_long(prompt_tokens: int, context: int) -> ContextLengthExceeded:
    return ContextLengthExceeded(
        f"This model's maximum context length is {context} tokens; your prompt has {prompt_tokens}.",
        param="messages",
    )


def completion_too_long(prompt_tokens: int, max_tokens: int, context: int) -> ContextLengthExceeded:
    return ContextLengthExceeded(
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
        f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.",
        param="max_tokens",
    )
