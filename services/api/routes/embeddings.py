"""POST /v1/embeddings: one job on the embedding model's queue, answered as OpenAI's list of embeddings.

The job takes every input of the request at once (the engine batches them); the worker sends the
vectors as base64 float32, which is OpenAI's `encoding_format=base64` as is, and decoded to floats for
`float`. The openai SDK asks for base64 unless told otherwise, so that path does no float printing at all.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Literal

import falcon
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.api.pipeline.serving import Serving
from services.common.catalog import Catalog
from services.common.errors import InvalidRequest
from services.common.events import Delta, Done, Embedded, Usage, unpack_vector
from services.common.jobs import SamplingParams
from services.common.schemas import KeepAlive, keep_alive_seconds
from services.common.settings import Settings

log = logging.getLogger(__name__)
MAX_INPUTS = 2048
"""OpenAI's limit on inputs per request."""

MAX_TOKEN_ID = 2**31 - 1
"""Token ids are int32 in every engine; whether an id is in the model's vocabulary only the worker knows
(its engine refuses one past it with a 400 naming `input`)."""
MAX_DIMENSIONS = 2**16
"""OpenAI's largest embeddings have 3,072; the field is refused anyway, but a number is bounded first."""

TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings body; `input` is a text, texts, token ids, or lists of token ids."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    input: str | list[str] | TokenIds | list[TokenIds]
    model: str = Field(min_length=1)
    dimensions: Annotated[int, Field(ge=1, le=MAX_DIMENSIONS)] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    keep_alive: KeepAlive | None = None

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: str | list) -> str | list:
        items = [value] if isinstance(value, str) else value
        if not items or len(items) > MAX_INPUTS:
            raise ValueError(f"send between 1 and {MAX_INPUTS} inputs")
        if any(isinstance(x, str) and not x for x in items):
            raise ValueError("an input must not be an empty string")
        return value

    @field_validator("encoding_format", mode="before")
    @classmethod
    def _nullable(cls, value: object) -> object:
        return "float" if value is None else value

    def inputs(self) -> tuple[str | tuple[int, ...], ...]:
        if isinstance(self.input, str):
            return (self.input,)
        if self.input and isinstance(self.input[0], int):
            return (tuple(self.input),)  # one array of token ids
        return tuple(x if isinstance(x, str) else tuple(x) for x in self.input)


def embedding_list(model: str, vectors: tuple[str, ...], encoding: str, usage: Usage) -> dict:
    """OpenAI's response body: base64 vectors pass through, float ones are decoded."""
    data = [
        {"object": "embedding", "index": i, "embedding": v if encoding == "base64" else unpack_vector(v)}
        for i, v in enumerate(vectors)
    ]
    tokens = usage.prompt_tokens
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class EmbeddingsResource:
    def __init__(self, settings: Settings, catalog: Catalog, serving: Serving) -> None:
        self.settings = settings
        self.catalog = catalog
        self.serving = serving

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.serving.read(req, EmbeddingRequest)
        model_id = self.catalog.resolve(body.model)
        self.serving.authorize(req, model_id, "embedding", "/v1/embeddings")
        if body.dimensions is not None:
            raise InvalidRequest(
                f"The model '{model_id}' has a fixed number of dimensions; 'dimensions' is not supported.",
                param="dimensions",
            )
        self.serving.gateway.require_worker(model_id)
        job = self.serving.job(
            req,
            "embd-" + uuid.uuid4().hex,
            model_id,
            kind="embedding",
            inputs=body.inputs(),
            params=SamplingParams(max_tokens=1, max_tokens_explicit=False),
            keep_alive=keep_alive_seconds(body.keep_alive),
        )
        clock = self.serving.clock(req)
        flight, wait = self.serving.submit_one(req, job, clock)
        log.info("request %s model=%s inputs=%d", job.request_id, model_id, len(job.inputs))
        self.serving.answer(resp, flight, EmbeddingAnswer(model_id, body.encoding_format), clock, wait)


class EmbeddingAnswer:
    """The embeddings' JSON body (serving.Answer): the vectors of the job's one `embedded` event."""

    def __init__(self, model: str, encoding: str) -> None:
        self.model = model
        self.encoding = encoding
        self.vectors: tuple[str, ...] = ()

    def take(self, event: Delta | Embedded) -> None:
        if isinstance(event, Embedded):
            self.vectors = event.vectors

    def body(self, done: Done) -> dict:
        return embedding_list(self.model, self.vectors, self.encoding, done.usage)
