"""The job payload that crosses Redis from the API to a worker, versioned and defined once."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JOB_VERSION = 1
JOB_FUNCTION = "services.worker.job.run"


class ChatMessage(BaseModel):
    """A chat turn after validation: content is always plain text here."""

    model_config = ConfigDict(frozen=True)
    role: str
    content: str


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


class Job(BaseModel):
    """A completion job: the JSON dict RQ carries is `Job.model_dump()`."""

    model_config = ConfigDict(frozen=True)
    v: Literal[1] = JOB_VERSION
    request_id: str
    model: str
    kind: Literal["chat", "completion"]
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    params: SamplingParams
    accepted_at: float = Field(description="unix time the API admitted the request")
    deadline: float = Field(description="unix time after which nobody waits for the answer")
    attempt: int = 1

    def to_wire(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: dict) -> Job:
        return cls.model_validate(data)
