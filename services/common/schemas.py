"""OpenAI request bodies, validated once at the boundary (fields in OpenAI's order).

Strict types: `"stream": "yes"` or `"max_tokens": "10"` is a 400 naming the field, as OpenAI does.
Every OpenAI parameter that changes the answer is parsed here and either honored or refused with a 400
naming it (`logit_bias`, `timings_per_token`; an engine refuses what it cannot do, e.g. tools in-process,
`echo` with `logprobs` on llama-server, which gives no logprobs for prompt tokens, or `suffix` for a model
without fill-in-the-middle tokens). The engines' own fields (llama.cpp's `grammar`, vLLM's `guided_json`,
...) are parsed too: common/engine_fields.py.
Fields nobody here knows are still ignored, as vLLM does: SDKs send bookkeeping (`store`, `metadata`,
`service_tier`) that does not change the answer, and refusing it would break them for nothing.
`null` for a parameter OpenAI documents as nullable means "not sent": its default applies, so inside
the service the types stay plain (a float temperature, never None).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.common import durations
from services.common.errors import ECHO_CHARS, InvalidRequest, clip

MAX_STOP = 16
"""OpenAI allows 4; Continue's autocomplete sends a dozen (its FIM template's, blank lines, fences:
continuedev/continue#2461), and every engine here takes any number (llama-server, vLLM, our StopMatcher)."""
MAX_STOP_CHARS = 256
"""OpenAI documents no length for a stop sequence; a bound keeps the engines' stop scans cheap."""
MAX_GRAMMAR_CHARS = 65_536
"""A GBNF grammar or regex of 64 KiB is far beyond any hand-written one; the body limit bounds the rest."""
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
"""OpenAI's seed range (int64): a bigger integer is a 400 here, not an overflow inside an engine."""
MAX_TOKENS = 2**24
"""Above any served model's context (the largest today hold ~10M tokens), far below the engines' int32:
a bigger max_tokens could never be served, and past 2**31 it would overflow inside llama.cpp."""
MAX_TOP_K = 2**20
"""Above any vocabulary (Gemma's is 262,144): a larger top_k means the same as the whole vocabulary."""


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _default_if_null(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A nullable OpenAI parameter sent as `null` validates as if it had not been sent."""
    if value is None and info.field_name is not None:
        return model.model_fields[info.field_name].get_default(call_default_factory=True)
    return value


BodyT = TypeVar("BodyT", bound="_Body")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ContentPart(_Body):
    """Any part a client may send; only text parts can be served by a text model."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    type: str
    text: str | None = None


FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")]
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


class FunctionDefinition(_Body):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionRef(_Body):
    name: FunctionName


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionRef


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    """A call in an assistant turn the client sends back (the conversation so far)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class JSONSchemaFormat(_Body):
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    """llama-server's own spelling: `{"type": "json_object", "schema": {...}}` (or json_schema with the schema at
    the top), the JSON constrained by that schema."""

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None and self.schema_ is None:
            raise InvalidRequest(
                "Missing required parameter: 'response_format.json_schema'.", param="response_format.json_schema"
            )
        if self.type == "text" and self.schema_ is not None:
            raise InvalidRequest(
                "response_format.schema needs type 'json_object' or 'json_schema'.", param="response_format.schema"
            )
        return self

    def to_wire(self) -> dict[str, Any] | None:
        """OpenAI's shape for the engines, or None for plain text (nothing to enforce)."""
        if self.type == "text":
            return None
        if self.json_schema is None:
            return {"type": "json_object"} if self.schema_ is None else schema_format(self.schema_)
        spec = self.json_schema.model_dump(by_alias=True, exclude_none=True)
        spec.setdefault("schema", {"type": "object"})
        return {"type": "json_schema", "json_schema": spec}


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    """A bare JSON schema (llama-server's top-level `json_schema`, a `schema` in response_format) as OpenAI's
    json_schema response_format: every engine that enforces one enforces the other the same way."""
    return {"type": "json_schema", "json_schema": {"name": "json_schema", "schema": schema}}


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_turns(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs the tool_call_id it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(value, list):
            for part in value:
                if part.type != "text" or part.text is None:
                    raise ValueError(f"content part type {clip(part.type)!r} is not supported; send text parts")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False

    @field_validator("include_usage", mode="before")
    @classmethod
    def _nullable(cls, value: Any, info: ValidationInfo) -> Any:
        return _default_if_null(cls, value, info)


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
GuidedChoice = Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(min_length=1, max_length=256)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]


def _keep_alive(value: str | int | float) -> str | int | float:
    durations.seconds(value)  # BadDuration: a 400 naming keep_alive
    return value


_KeepAliveSeconds = (
    Annotated[int, Field(ge=-1, le=int(durations.MAX_S))] | Annotated[float, Field(ge=-1, le=durations.MAX_S)]
)
KeepAlive = Annotated[
    Annotated[Annotated[str, Field(max_length=32)] | _KeepAliveSeconds, Field(union_mode="left_to_right")],
    AfterValidator(_keep_alive),
]
"""Ollama's keep_alive, per request: how long the model stays loaded after this request ('5m', 30, 0, -1)."""


def keep_alive_seconds(value: str | int | float | None) -> float | None:
    """The Job's form: seconds, -1 for forever, None when the request did not say."""
    if value is None:
        return None
    secs = durations.seconds(value)
    return -1.0 if secs == durations.FOREVER else secs


class _SamplingBody(_Body):
    """Parameters shared by both completion endpoints."""

    frequency_penalty: Penalty = 0.0
    max_tokens: TokenCount | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    presence_penalty: Penalty = 0.0
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    user: str | None = None
    # vendor extras (extra_body), as vLLM and llama-server name them: None leaves the engine's default
    top_k: Annotated[int, Field(ge=-1, le=MAX_TOP_K)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    logit_bias: dict[str, float] | None = None
    # engines' own fields that their users send through OpenAI clients (services/common/engine_fields.py):
    # each reaches the engines that take it or is a 400 naming it, never ignored
    grammar: Annotated[str, Field(max_length=MAX_GRAMMAR_CHARS)] | None = None
    json_schema: dict[str, Any] | None = None
    n_probs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    cache_prompt: bool | None = None
    timings_per_token: bool | None = None
    guided_json: dict[str, Any] | Annotated[str, Field(max_length=MAX_GRAMMAR_CHARS)] | None = None
    guided_regex: Annotated[str, Field(max_length=MAX_GRAMMAR_CHARS)] | None = None
    guided_choice: GuidedChoice | None = None
    guided_grammar: Annotated[str, Field(max_length=MAX_GRAMMAR_CHARS)] | None = None
    structured_outputs: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None

    @field_validator("timings_per_token")
    @classmethod
    def _no_timings(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError(
                "per-token timings are not relayed (the worker reads them itself); see x-queue-wait-ms and /metrics"
            )
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    @field_validator("frequency_penalty", "n", "presence_penalty", "stream", "temperature", "top_p", mode="before")
    @classmethod
    def _nullable(cls, value: Any, info: ValidationInfo) -> Any:
        return _default_if_null(cls, value, info)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
            if any(not s for s in value):
                raise ValueError("stop sequences must not be empty")
        stops = [value] if isinstance(value, str) else value or []
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None or self.stop == "":
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingBody):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    """vLLM's (and llama-server's) template switches: continue the last assistant turn instead of a new one."""
    logprobs: bool = False
    max_completion_tokens: TokenCount | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @field_validator("logprobs", "parallel_tool_calls", mode="before")
    @classmethod
    def _nullable_flags(cls, value: Any, info: ValidationInfo) -> Any:
        return _default_if_null(cls, value, info)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        """OpenAI's cross-field rules, each a 400 naming the parameter."""
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequest("tool_choice is only allowed when tools are specified.", param="tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {
            t.function.name for t in self.tools or ()
        }:
            raise InvalidRequest(
                f"tool_choice names the function '{choice.function.name}', which is not in tools.", param="tool_choice"
            )
        if self.tools and self.response_format and self.response_format.type != "text" and choice != "none":
            raise InvalidRequest(
                "response_format cannot be combined with tools unless tool_choice is 'none'.", param="response_format"
            )
        return self

    def tool_choice_wire(self) -> str | dict[str, Any] | None:
        choice = self.tool_choice
        return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingBody):
    model: str = Field(min_length=1)
    prompt: str | list[str]
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    suffix: str | None = None
    """Fill-in-the-middle: llama-server's /infill for a model whose GGUF has FIM tokens; elsewhere a 400."""

    @field_validator("echo", mode="before")
    @classmethod
    def _nullable_echo(cls, value: Any, info: ValidationInfo) -> Any:
        return _default_if_null(cls, value, info)

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:  # n x prompts is bounded by MAX_N (api/fanout.py)
            raise ValueError("send at least one prompt")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def prompts(self) -> tuple[str, ...]:
        """Every prompt of the request: OpenAI answers n choices for each, prompt by prompt."""
        return (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ModelCommand(_Body):
    """Body of /v1/models/load and /v1/models/unload."""

    model: str = Field(min_length=1)
    worker: str | None = None
    wait: float = Field(default=30.0, ge=0, le=300)
    """Seconds to wait for the workers' answer before answering 202 (the command still runs); 0 waits not."""


def _param(loc: tuple) -> str | None:
    """pydantic's location as OpenAI writes a param: messages[0].content."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "bool", "int", "float") or any(m in str(part) for m in ("[", "(", "constrained-")):
            continue  # pydantic names union members in the location; OpenAI does not
        else:  # a dict's key is the client's text
            out += f".{clip(part, ECHO_CHARS)}" if out else clip(part, ECHO_CHARS)
    return out or None


def _telling(errors: list) -> dict:
    """The error to report: pydantic fails a union once per member, first the members of another type
    (a list of token ids is not a string); the member of the right type says what is wrong with the value."""
    first = errors[0]
    same_field = (e for e in errors if e["loc"][:1] == first["loc"][:1])
    return next((e for e in same_field if not e["type"].endswith("_type")), first)


def parse(model: type[BodyT], raw: bytes) -> BodyT:
    """Validate a JSON body into `model`, or raise a 400 naming the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = _telling(exc.errors())
        param = _param(tuple(err["loc"]))
        if err["type"] == "json_invalid":
            raise InvalidRequest(f"We could not parse the JSON body of your request: {err['msg']}") from None
        if err["type"] == "model_type" and not err["loc"]:
            raise InvalidRequest("The request body must be a JSON object.") from None
        if err["type"] == "missing":
            raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for '{param}': {msg}", param=param) from None
