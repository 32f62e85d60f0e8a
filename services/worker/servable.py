"""Which catalog models a worker's engines can load, and why not the others.

A sidecar (llama-server, vLLM) serves exactly the model it was started with: connecting to it "for"
another model id would advertise that id and route its requests to the wrong weights (an embedding
server asked to chat answers 500). An in-process engine loads any catalog model that has a source for it,
of a kind it runs, whose weights are on this machine; so does a worker that starts a llama-server per model
itself (`any_model`: --spawn-llama-server --on-demand). The worker heartbeats the list (WorkerRecord.can_serve)
so the API sends a load only where it can succeed, and checks it again when the command arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.common.catalog import Catalog
from services.worker.engines.base import EngineUnavailable
from services.worker.engines.profiles import PROFILES

SIDECARS = tuple(PROFILES)
KINDS = {"llama_cpp": ("generate", "embedding"), "llama_server": ("generate", "embedding"), "mlx": ("generate",)}
"""What each in-process engine runs: llama.cpp embeds too (a context made with embedding=True); mlx-lm generates."""


class Refused(EngineUnavailable):
    """A command this worker will not try: none of its engines holds the model, it has no room, or it drains."""


class Servable:
    def __init__(self, catalog: Catalog, engines: Sequence[str], models_dir: Path, *, any_model: bool = False) -> None:
        self.catalog = catalog
        self.any_model = any_model
        """Its llama-server is its own, started per model: any model with llama_server weights here."""
        self.engines = tuple(engines)
        self.models_dir = models_dir
        self.pinned: tuple[str, ...] = ()
        """The models the worker was started with: all that its sidecar serves."""

    def pin(self, models: Sequence[str]) -> None:
        self.pinned = tuple(dict.fromkeys(self.catalog.resolve(m) for m in models))

    def reason(self, model_id: str) -> str | None:
        """Why no engine of this worker can load `model_id` (a catalog id), or None when one can."""
        why = [self.engine_reason(engine, model_id) for engine in self.engines]
        if not why or any(w is None for w in why):
            return None if why else "this worker has no engine"
        return "; ".join(w for w in why if w)

    def engine_reason(self, engine: str, model_id: str) -> str | None:
        """Why `engine` cannot load `model_id`, or None."""
        own_server = self.any_model and engine == "llama_server"
        if (engine in SIDECARS and not own_server) or engine not in KINDS:  # not described here: its start model only
            if model_id in self.pinned:
                return None
            return f"its {engine} serves only {', '.join(self.pinned) or 'the model it was started with'}"
        spec = self.catalog.models.get(model_id)
        if spec is None:
            return "it is not in the catalog"
        if spec.kind not in KINDS.get(engine, ()):
            return f"{engine} does not run {spec.kind} models"
        path = self.catalog.path_for(model_id, engine, self.models_dir)
        if path is None:
            return f"models.yaml has no {engine} source for it"
        if not path.exists():
            return f"its {engine} weights ({path.name}) are not on this machine"
        return None

    def models(self) -> tuple[str, ...]:
        return tuple(m for m in self.catalog.models if self.reason(m) is None)
