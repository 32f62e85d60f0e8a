"""OpenAI request bodies, validated once at the boundary (fields in OpenAI's order).

Strict types: `"stream": "yes"` or `"max_tokens": "10"` is a 400 naming the field, as OpenAI does.
Unknown fields are ignored, as vLLM does, so clients that send extra OpenAI options still work.
`null` for a parameter OpenAI documents as nullable means "not sent": its default applies, so inside
the service the types stay plain (a float temperature, never None).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from services.common.errors import InvalidRequest

MAX_STOP = 4
MAX_STOP_CHARS = 256
"""OpenAI documents no length for a stop sequence; a bound keeps the engines' stop scans cheap."""
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
"""OpenAI's seed range (int64): a bigger integer is a 400 here, not an overflow inside an engine."""


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


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(value, list):
            for part in value:
                if part.type != "text" or part.text is None:
                    raise ValueError(f"content part type {part.type!r} is not supported; send text parts")
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
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]


class _SamplingBody(_Body):
    """Parameters shared by both completion endpoints."""

    frequency_penalty: Penalty = 0.0
    max_tokens: PositiveInt | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    presence_penalty: Penalty = 0.0
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    user: str | None = None

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

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("n > 1 is not supported; send n separate requests")
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
    max_completion_tokens: PositiveInt | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingBody):
    model: str = Field(min_length=1)
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    @field_validator("echo", mode="before")
    @classmethod
    def _nullable_echo(cls, value: Any, info: ValidationInfo) -> Any:
        return _default_if_null(cls, value, info)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send exactly one prompt per request (a string or a list of one string)")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ModelCommand(_Body):
    """Body of /v1/models/load and /v1/models/unload."""

    model: str = Field(min_length=1)
    worker: str | None = None


def _param(loc: tuple) -> str | None:
    """pydantic's location as OpenAI writes a param: messages[0].content."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "bool", "int", "float") or any(m in str(part) for m in ("[", "(", "constrained-")):
            continue  # pydantic names union members in the location; OpenAI does not
        else:
            out += f".{part}" if out else str(part)
    return out or None


def parse(model: type[BodyT], raw: bytes) -> BodyT:
    """Validate a JSON body into `model`, or raise a 400 naming the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(tuple(err["loc"]))
        if err["type"] == "json_invalid":
            raise InvalidRequest(f"We could not parse the JSON body of your request: {err['msg']}") from None
        if err["type"] == "model_type" and not err["loc"]:
            raise InvalidRequest("The request body must be a JSON object.") from None
        if err["type"] == "missing":
            raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for '{param}': {msg}", param=param) from None
