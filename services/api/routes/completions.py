"""POST /v1/chat/completions and /v1/completions: validate, admit, enqueue, then stream or aggregate.

Both endpoints share one path; they differ only in schema, id prefix, prompt fields and chunk shapes.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import falcon

from services.api.pipeline.serving import Serving
from services.api.routes import fanout
from services.api.routes.chat_model import ChatModel
from services.api.routes.completion_shapes import ChunkFormat, CompletionAnswer, CompletionChunks
from services.common import engine_fields
from services.common.catalog import Catalog
from services.common.jobs import ChatMessage, Job, SamplingParams
from services.common.schemas import ChatCompletionRequest, CompletionRequest, keep_alive_seconds
from services.common.settings import Settings

log = logging.getLogger(__name__)


class CompletionResource:
    chat: bool = True

    def __init__(self, settings: Settings, catalog: Catalog, serving: Serving) -> None:
        self.settings = settings
        self.catalog = catalog
        self.serving = serving
        self.gateway = serving.gateway
        self.chat_model = ChatModel(settings.chat_model if self.chat else "", catalog, serving.gateway)

    def _job(
        self, req: falcon.Request, body: ChatCompletionRequest | CompletionRequest, model_id: str, rid: str
    ) -> Job:
        requested = body.requested_max_tokens()
        params = SamplingParams(
            max_tokens=requested or self.settings.default_max_tokens,
            max_tokens_explicit=requested is not None,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_sequences(),
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            top_k=body.top_k,
            min_p=body.min_p,
            repetition_penalty=body.repetition_penalty,
            **_decoding(body),
        )
        common = {"params": params, "keep_alive": keep_alive_seconds(body.keep_alive)}
        if isinstance(body, ChatCompletionRequest):
            messages = tuple(
                ChatMessage(
                    role=m.role,
                    content=m.text(),
                    tool_calls=tuple(c.model_dump() for c in m.tool_calls or ()),
                    tool_call_id=m.tool_call_id,
                )
                for m in body.messages
            )
            return self.serving.job(req, rid, model_id, kind="chat", messages=messages, **common)
        return self.serving.job(req, rid, model_id, kind="completion", prompt=body.prompt_text(), **common)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        schema = ChatCompletionRequest if self.chat else CompletionRequest
        body = self.serving.read(req, schema)
        model_id = self.chat_model.resolve(req, body.model)  # an OpenAI name chats with CHAT_MODEL
        req.context.model_name = model_id  # the requests counter's model label
        self.serving.authorize(req, model_id, "generate", req.path)
        self.gateway.require_worker(model_id)
        rid = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        job = self._job(req, body, model_id, rid)
        clock = self.serving.clock(req)
        if self.settings.log_prompts:
            log.info("request %s prompt: %s", rid, job.messages or job.prompt)
        if fanout.wanted(body):  # n > 1 or a prompt list: one job per choice, merged
            return fanout.serve(req, resp, body, job, clock, self.serving, self.settings.max_n)
        flight, wait = self.serving.submit_one(req, job, clock)
        log.info(
            "request %s (x-request-id %s) model=%s stream=%s",
            rid,
            req.get_header("X-Request-ID"),
            model_id,
            body.stream,
        )
        fmt = ChunkFormat(self.chat, rid, int(job.accepted_at), model_id, body.include_usage())
        if body.stream:
            self.serving.stream(resp, flight, CompletionChunks(fmt), clock, wait)  # raises a 4xx/5xx
            return
        self.serving.answer(resp, flight, CompletionAnswer(fmt), clock, wait)


def _decoding(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """What constrains or reports the decoding: logprobs, response_format and tools (chat only)."""
    if isinstance(body, CompletionRequest):
        fields = {"logprobs": body.logprobs is not None, "top_logprobs": body.logprobs or 0, "echo": body.echo}
        return fields | engine_fields.sampling(body, chat=False)
    out: dict[str, Any] = {"logprobs": body.logprobs, "top_logprobs": body.top_logprobs or 0}
    if body.response_format is not None:
        out["response_format"] = body.response_format.to_wire()
    if body.tools:
        out["tools"] = tuple(t.model_dump(exclude_none=True) for t in body.tools)
        out["tool_choice"] = body.tool_choice_wire()
        out["parallel_tool_calls"] = body.parallel_tool_calls
    return out | engine_fields.sampling(body, chat=True)  # llama.cpp's and vLLM's own fields (common/engine_fields.py)


class ChatCompletions(CompletionResource):
    chat = True


class Completions(CompletionResource):
    chat = False
