"""The native stack's llama-server: llama.cpp's C++ server, started beside the worker on CPU machines.

Measured through the whole stack on a 2-core box, llama-server with 8 slots gave 69 tokens/s at 8
clients against 34-43 for in-process llama.cpp (README, "Benchmark"), so it is what `make up` runs
wherever `INFERENCE_ENGINE=auto` would otherwise pick in-process llama.cpp. MLX on Apple Silicon, vLLM
on a GPU box, or a llama-server of your own (LLAMA_SERVER_URL) keep their place; so does an explicit
INFERENCE_ENGINE=llama_cpp.
"""

from __future__ import annotations

from pathlib import Path

from services.common.catalog import Catalog
from services.common.settings import Settings
from services.worker.detect import Facts, choose
from services.worker.engines.llama_server_process import LlamaServerCommand


def wanted(settings: Settings, facts: Facts, *, binary: Path | None) -> bool:
    """True when the stack should start llama-server: asked for by name without a URL of its own, or
    `auto` would fall to in-process llama.cpp and a llama-server binary is at hand."""
    if settings.llama_server_url:
        return False
    if settings.inference_engine == "llama_server":
        return True
    if settings.inference_engine != "auto" or binary is None:
        return False
    engines = choose("auto", settings.device_type, facts).engines
    return bool(engines) and engines[0] == "llama_cpp"


def command(settings: Settings, catalog: Catalog) -> LlamaServerCommand:
    """llama-server for the default model on loopback, one slot per concurrent request."""
    model_id = catalog.resolve(settings.default_model)
    path = catalog.path_for(model_id, "llama_server", settings.models_dir)
    if path is None:
        raise ValueError(f"models.yaml has no llama_server weights for {model_id}")
    spec = catalog.models[model_id]
    return LlamaServerCommand(
        path,
        settings.llama_server_port,
        slots=settings.llama_server_parallel,
        slot_context=min(settings.n_ctx, spec.context_length),
        threads=settings.n_threads,
        chat_template=spec.chat_format,
        alias=model_id,
    )
