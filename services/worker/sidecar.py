"""The worker's own llama-server: started as a child, watched, restarted with backoff when it dies.

Owning the process (rather than finding it at a URL) is what lets the worker see a crash the moment it
happens, with the signal, and stop advertising the model before any client is routed to a dead server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from services.common.catalog import Catalog
from services.common.settings import Settings
from services.common.supervisor import Policy, Supervisor
from services.worker.engines.llama_server_process import LlamaServerCommand, find_binary


def command(settings: Settings, catalog: Catalog, model_id: str | None = None) -> LlamaServerCommand:
    """llama-server for one model on loopback, one slot per concurrent request."""
    model_id = catalog.resolve(model_id or settings.default_model)
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


def healthy(url: str) -> bool:
    """llama-server answers 200 on /health once its model is loaded (503 while loading)."""
    return httpx.get(f"{url}/health", timeout=2).status_code == 200


def supervise(
    cmd: LlamaServerCommand,
    *,
    log_path: Path | None,
    on_up: Callable[[], None],
    on_down: Callable[[str], None],
    policy: Policy | None = None,
    binary: str | None = None,
) -> Supervisor:
    """A Supervisor for `cmd` (not started yet)."""
    return Supervisor(
        "llama-server",
        cmd.argv(binary or find_binary()),
        log_path=log_path,
        ready=lambda: healthy(cmd.url),
        on_up=on_up,
        on_down=on_down,
        policy=policy,
    )
