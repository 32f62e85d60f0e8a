"""The job payload that crosses Redis from the API to a worker, versioned and defined once."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JOB_VERSION = 1
JOB_FUNCTION = "services.worker.job.run"
MAX_ATTEMPTS = 2
"""A job lost before it started is enqueued once more; a second loss is the client's 503."""


def attempt_id(request_id: str, attempt: int) -> str:
    """The job id (RQ job, lease and stream keys) of one attempt of a request.

    Each attempt has its own keys, so a duplicate run is impossible: a retry deletes the lease of the lost
    attempt, which a worker still holding it (a worker only thought dead) sees within 50 ms and stops,
    and whatever it writes lands in a stream nobody reads.
    """
    return request_id if attempt == 1 else f"{request_id}-a{attempt}"


class ChatMessage(BaseModel):
    """A chat turn after validation: content is always plain text here."""

    model_config = ConfigDict(frozen=True)
    role: str
    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    """An assistant turn's calls, OpenAI-shaped ({id, type, function: {name, arguments}})."""
    tool_call_id: str | None = None
    """A `tool` turn: which call this is the result of."""


class SamplingParams(BaseModel):
    """What the engine needs to sample; `max_tokens` is already resolved to a number."""

    model_config = ConfigDict(frozen=True)
    max_tokens: int
    max_tokens_explicit: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    """Vendor extras (extra_body): None leaves the engine's own choice."""
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: dict[str, Any] | None = None
    """OpenAI's response_format ({"type": "json_object"} or {"type": "json_schema", "json_schema": {...}})."""
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    """Constraints on what may be decoded travel with the sampling: every engine gets them in one place."""
    grammar: str | None = None
    """llama.cpp's GBNF grammar, as its users send it (llama-server's own field)."""
    cache_prompt: bool | None = None
    """llama-server's prompt-cache switch; None leaves the engine's default (reuse)."""
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    """Chat template switches (vLLM's names, which llama-server reads too); None leaves the template's default."""
    guided: dict[str, Any] | None = None
    """vLLM's guided_* / structured_outputs fields as the client sent them (only vLLM takes them)."""
    suffix: str | None = None
    """Completions fill-in-the-middle: the text after the hole (llama-server's /infill input_suffix)."""
    echo: bool = False
    """Completions: the prompt comes first in the text, and with logprobs its tokens' entries come first
    (engines/echo.py). The engine does it: prompt-token logprobs need its logits."""


class Job(BaseModel):
    """A completion job: the JSON dict RQ carries is `Job.model_dump()`."""

    model_config = ConfigDict(frozen=True)
    v: Literal[1] = JOB_VERSION
    request_id: str
    model: str
    kind: Literal["chat", "completion", "embedding"]
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    inputs: tuple[str | tuple[int, ...], ...] = ()
    """An embedding job's texts (or token id arrays), embedded in order; `params` is unused there."""
    params: SamplingParams
    accepted_at: float = Field(description="unix time the API admitted the request")
    deadline: float = Field(description="unix time after which nobody waits for the answer")
    attempt: int = 1
    keep_alive: float | None = Field(
        None, description="the request's keep_alive in seconds (negative: keep loaded); None: the model's own"
    )
    client_request_id: str | None = Field(
        None, description="the X-Request-ID the API answered with, so the worker's log lines carry it too"
    )
    key_name: str | None = Field(None, description="the name of the caller's API key, for limits and usage")
    traceparent: str | None = Field(
        None, description="W3C trace context of the API's span (services/common/tracing.py), when tracing is on"
    )
    choice: int = Field(
        0,
        description="the job's index among its request's choices (n > 1, prompt lists); only choice 0 counts"
        " as a request for the key's RPM and usage, as OpenAI counts a request whatever its n",
    )
    prompt_counted: bool = Field(
        True,
        description="False for a prompt's second and later choices: the prompt is read once, so its tokens"
        " count once for the key's usage and TPM, as the merged answer's usage counts them",
    )

    def next_attempt(self, client_request_id: str) -> Job:
        attempt = self.attempt + 1
        return self.model_copy(update={"attempt": attempt, "request_id": attempt_id(client_request_id, attempt)})

    def to_wire(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: dict) -> Job:
        return cls.model_validate(data)
