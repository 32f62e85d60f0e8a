"""Builds the engine a worker runs; imports lazily so a box needs only its own engine's packages."""

from __future__ import annotations

from pathlib import Path

from services.common.catalog import Catalog
from services.common.settings import Settings
from services.worker.engines.base import Engine, EngineUnavailable
from services.worker.engines.profiles import PROFILES

__all__ = ["ENGINES", "EngineUnavailable", "build_engine", "model_path", "sidecar_url"]

ENGINES = ("llama_cpp", "llama_server", "vllm", "mlx")


def model_path(catalog: Catalog, model_id: str, engine: str, models_dir: Path) -> Path:
    path = catalog.path_for(model_id, engine, models_dir)
    if path is None:
        raise EngineUnavailable(f"models.yaml has no {engine} source for {model_id}")
    if not path.exists():
        raise EngineUnavailable(f"{path} is missing: fetch it once with `make models`")
    return path


def sidecar_url(engine: str, settings: Settings, explicit: str | None = None) -> str:
    """Where a sidecar engine's server is: `--upstream-url`, else LLAMA_SERVER_URL or VLLM_URL ("" if none)."""
    return explicit or getattr(settings, PROFILES[engine].url_setting)


def sidecar_key(engine: str, settings: Settings) -> str:
    """The key the sidecar wants (LLAMA_SERVER_API_KEY; the worker's own for a llama-server it started)."""
    field = PROFILES[engine].key_setting
    return getattr(settings, field) if field else ""


def upstream_names(catalog: Catalog, model_id: str, engine: str) -> tuple[str, ...]:
    """Every name a sidecar serving `model_id` may report: `--alias`/`--served-model-name` set to the id or an
    alias, else llama-server's model file or vLLM's repo; the id comes first (error messages name it)."""
    spec = catalog.models[model_id]
    src = spec.source(engine) or {}
    files = [Path(src["path"]).name] if "path" in src else []
    repos = [src["hf_repo"]] if "hf_repo" in src else []
    return tuple(dict.fromkeys([spec.id, *spec.aliases, *files, *repos]))


def build_engine(
    engine: str,
    model_id: str,
    *,
    catalog: Catalog,
    settings: Settings,
    slots: int,
    upstream_url: str | None = None,
    context: int | None = None,
) -> Engine:
    """An unloaded engine for `model_id`; call `load()` on it. `context`: tokens per request the worker's memory
    budget allows (services/worker/budget.py); default the model's own, capped by N_CTX."""
    spec = catalog.models[model_id]
    context = context or spec.runtime_context(settings.n_ctx)
    if engine == "llama_cpp":
        from services.worker.engines.llama_cpp import LlamaCppEngine

        return LlamaCppEngine(
            model_path(catalog, model_id, "llama_cpp", settings.models_dir),
            chat_format=spec.chat_format,
            slots=slots,
            n_ctx=context,
            n_threads=settings.n_threads,
            embedding=spec.kind == "embedding",
        )
    if engine in PROFILES:
        from services.worker.engines.openai_http import OpenAIHTTPEngine

        url = sidecar_url(engine, settings, upstream_url)
        if not url:
            raise EngineUnavailable(f"no upstream URL for {engine}: set {engine.upper()}_URL or --upstream-url")
        return OpenAIHTTPEngine(
            url,
            name=engine,
            concurrency=slots,
            context=context,
            timeout=settings.request_timeout,
            read_tick=settings.stream_read_tick_ms / 1000,
            api_key=sidecar_key(engine, settings),
            accepts=upstream_names(catalog, model_id, engine),
        )
    if engine == "mlx":
        from services.worker.engines.mlx import MLXEngine

        return MLXEngine(model_path(catalog, model_id, "mlx", settings.models_dir), slots=slots)
    raise EngineUnavailable(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
