"""POST /v1/responses: OpenAI's Responses API over the same queue and engines, as one chat job.

`instructions` become a system turn before `input` (a text, or items); the answer's text is one
`message` output item with one `output_text` part. `text.format` (json_object, json_schema) is the chat
API's response_format for the engine's grammar or guided decoding. Nothing is stored: `store: true` and
`previous_response_id` are refused with a 400 that says so. Function tools go to the engine as the chat
API's tools; its calls come back as `function_call` output items, and `function_call` and
`function_call_output` input items become the assistant and tool turns of the chat.
Streaming sends OpenAI's typed events (responses_stream.py).
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any, Literal

import falcon
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.api.pipeline.serving import Serving
from services.api.routes.chat_model import ChatModel
from services.api.routes.responses_stream import ResponseAnswer, ResponseChunks
from services.common.catalog import Catalog
from services.common.errors import InvalidRequest
from services.common.events import Usage
from services.common.jobs import ChatMessage, Job, SamplingParams
from services.common.schemas import FunctionName, TokenCount
from services.common.settings import Settings

log = logging.getLogger(__name__)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class InputText(_Body):
    """A text part of a message; `output_text` is how an earlier assistant turn comes back."""

    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(_Body):
    """A call the model made earlier, sent back with the conversation."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutput(_Body):
    """The caller's result of a call, matched by `call_id`."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str


class FunctionTool(_Body):
    """A Responses function tool: the chat API's `function` object, flattened."""

    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat_wire(self) -> dict[str, Any]:
        return {"type": "function", "function": self.model_dump(exclude_none=True, exclude={"type"})}


class FunctionChoice(_Body):
    type: Literal["function"]
    name: FunctionName


InputItem = InputMessage | FunctionCallItem | FunctionCallOutput


class TextFormat(_Body):
    """`text.format`: Responses' spelling of response_format (a json_schema's fields sit beside `type`)."""

    type: Literal["text", "json_object", "json_schema"]
    name: FunctionName | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _named_schema(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise InvalidRequest("A json_schema format needs a name and a schema.", param="text.format")
        return self

    def response_format(self) -> dict[str, Any] | None:
        """The chat API's response_format the engines enforce, or None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        spec = self.model_dump(by_alias=True, exclude_none=True, exclude={"type"})
        return {"type": "json_schema", "json_schema": spec}


class TextConfig(_Body):
    format: TextFormat | None = None


class ResponseRequest(_Body):
    """OpenAI's Responses body, the part a text model can serve; other fields are ignored as elsewhere."""

    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _nullable(cls, value: object) -> object:
        return False if value is None else value

    @model_validator(mode="after")
    def _tool_choice(self) -> ResponseRequest:
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequest("tool_choice is only allowed when tools are specified.", param="tool_choice")
        if isinstance(choice, FunctionChoice) and choice.name not in {t.name for t in self.tools or ()}:
            raise InvalidRequest(
                f"tool_choice names the function '{choice.name}', which is not in tools.", param="tool_choice"
            )
        if self.tools and self.response_format() is not None and choice != "none":
            raise InvalidRequest(
                "text.format cannot be combined with tools unless tool_choice is 'none'.", param="text.format"
            )
        return self

    def response_format(self) -> dict[str, Any] | None:
        fmt = self.text.format if self.text else None
        return fmt.response_format() if fmt else None

    def messages(self) -> tuple[ChatMessage, ...]:
        """The chat our engines template: instructions first, calls folded into assistant turns, outputs
        as `tool` turns (a developer turn is a system turn to the chat templates they apply)."""
        turns = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        items = [InputMessage(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        calls: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, FunctionCallItem):
                calls.append(
                    {
                        "id": item.call_id,
                        "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments},
                    }
                )
                continue
            if calls:
                turns.append(ChatMessage(role="assistant", content="", tool_calls=tuple(calls)))
                calls = []
            if isinstance(item, FunctionCallOutput):
                turns.append(ChatMessage(role="tool", content=item.output, tool_call_id=item.call_id))
            else:
                turns.append(ChatMessage(role="system" if item.role == "developer" else item.role, content=item.text()))
        if calls:
            turns.append(ChatMessage(role="assistant", content="", tool_calls=tuple(calls)))
        return tuple(turns)

    def tool_params(self) -> dict[str, Any]:
        """SamplingParams' tool fields, in the chat API's shapes the engines take."""
        if not self.tools:
            return {}
        choice = self.tool_choice
        wire = {"type": "function", "function": {"name": choice.name}} if isinstance(choice, FunctionChoice) else choice
        return {
            "tools": tuple(t.chat_wire() for t in self.tools),
            "tool_choice": wire,
            "parallel_tool_calls": True if self.parallel_tool_calls is None else self.parallel_tool_calls,
        }


def refuse_unsupported(body: ResponseRequest) -> None:
    """What this service cannot do answers a 400 naming the parameter, never a silent drop."""
    if body.store:
        raise InvalidRequest("Responses are not stored here; send store: false (or leave it out).", param="store")
    if body.previous_response_id:
        raise InvalidRequest(
            "Responses are not stored here, so previous_response_id cannot be used; send the whole conversation "
            "as input.",
            param="previous_response_id",
        )


def response_usage(usage: Usage) -> dict:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _text_format(body: ResponseRequest) -> dict:
    fmt = body.text.format if body.text else None
    return fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}


def _choice(body: ResponseRequest) -> str | dict:
    choice = body.tool_choice
    return choice.model_dump() if isinstance(choice, FunctionChoice) else choice or "auto"


def response_object(
    rid: str,
    created: int,
    model: str,
    body: ResponseRequest,
    params: SamplingParams,
    *,
    status: str,
    output: list[dict],
    usage: Usage | None = None,
) -> dict:
    """OpenAI's Response object, in its field order; `status` is in_progress, completed or incomplete."""
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": params.temperature,
        "text": {"format": _text_format(body)},
        "tool_choice": _choice(body),
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
        "top_p": params.top_p,
        "truncation": "disabled",
        "usage": response_usage(usage) if usage is not None else None,
        "user": body.user,
        "metadata": body.metadata or {},
    }


class ResponsesResource:
    def __init__(self, settings: Settings, catalog: Catalog, serving: Serving) -> None:
        self.settings = settings
        self.catalog = catalog
        self.serving = serving
        self.chat_model = ChatModel(settings.chat_model, catalog, serving.gateway)

    def _job(self, body: ResponseRequest, model_id: str, rid: str, req: falcon.Request) -> Job:
        params = SamplingParams(
            max_tokens=body.max_output_tokens or self.settings.default_max_tokens,
            max_tokens_explicit=body.max_output_tokens is not None,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            response_format=body.response_format(),
            **body.tool_params(),
        )
        return self.serving.job(req, rid, model_id, kind="chat", messages=body.messages(), params=params)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.serving.read(req, ResponseRequest)
        model_id = self.chat_model.resolve(req, body.model)  # an OpenAI name chats with CHAT_MODEL
        self.serving.authorize(req, model_id, "generate", "/v1/responses")
        refuse_unsupported(body)
        self.serving.gateway.require_worker(model_id)
        rid = "resp_" + uuid.uuid4().hex
        job = self._job(body, model_id, rid, req)
        clock = self.serving.clock(req)
        if self.settings.log_prompts:
            log.info("request %s input: %s", rid, job.messages)
        flight, wait = self.serving.submit_one(req, job, clock)
        log.info("request %s model=%s stream=%s", rid, model_id, body.stream)

        def build(status: str, output: list[dict], usage: Usage | None = None) -> dict:
            return response_object(
                rid, int(job.accepted_at), model_id, body, job.params, status=status, output=output, usage=usage
            )

        if body.stream:
            self.serving.stream(resp, flight, ResponseChunks(rid, build), clock, wait)
            return
        self.serving.answer(resp, flight, ResponseAnswer(rid, build), clock, wait)
