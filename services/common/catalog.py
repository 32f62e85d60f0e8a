"""The model catalog from models.yaml: ids, aliases, OpenAI names and per-engine sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from services.common.errors import InvalidRequest, ModelNotFound, clip


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    description: str = ""
    kind: Literal["generate", "embedding"] = "generate"
    """What the model does: generate text (chat, completions, responses) or embed it (embeddings)."""
    aliases: tuple[str, ...] = ()
    context_length: int = 4096
    chat_format: str | None = None
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def source(self, engine: str) -> dict[str, Any] | None:
        return self.sources.get(engine)


class Catalog:
    """Resolves whatever name a client sends to one canonical model id."""

    def __init__(self, models: dict[str, ModelSpec], default: str, openai_names: tuple[str, ...] = ()):
        if default not in models:
            raise ValueError(f"default model {default!r} is not in the catalog")
        self.models = models
        self.default = default
        self._names: dict[str, str] = {}
        for spec in models.values():
            for name in (spec.id, *spec.aliases):
                self._names[name.lower()] = spec.id
        for name in openai_names:
            self._names.setdefault(name.lower(), default)

    @classmethod
    def from_yaml(cls, path: Path, default: str | None = None) -> Catalog:
        data = yaml.safe_load(path.read_text())
        models = {mid: ModelSpec(id=mid, **body) for mid, body in (data.get("models") or {}).items()}
        chosen = default or data.get("default")
        if chosen and chosen not in models:
            chosen = next((m.id for m in models.values() if chosen.lower() in map(str.lower, m.aliases)), chosen)
        return cls(models, chosen, tuple(data.get("openai_names") or ()))

    def resolve(self, name: str) -> str:
        """Canonical id for `name`, or ModelNotFound (404) naming what was asked for (its start: a name is
        the client's text, of any length)."""
        found = self._names.get(name.lower())
        if found is None:
            raise ModelNotFound(f"The model '{clip(name)}' does not exist", param="model")
        return found

    def get(self, name: str) -> ModelSpec:
        return self.models[self.resolve(name)]

    def require_kind(self, model_id: str, kind: str, route: str) -> None:
        """A 400 naming the model when it cannot serve `route` (an embedding model asked to chat, or the reverse)."""
        spec = self.models[model_id]
        if spec.kind != kind:
            does = "embeds text" if spec.kind == "embedding" else "generates text"
            raise InvalidRequest(
                f"The model '{model_id}' {does} and cannot serve {route}.", param="model", code="model_not_supported"
            )

    def path_for(self, model_id: str, engine: str, models_dir: Path) -> Path | None:
        src = self.models[model_id].source(engine) or {}
        return models_dir / src["path"] if "path" in src else None
