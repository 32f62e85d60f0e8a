"""The native stack's llama-server: llama.cpp's C++ server, started beside the worker on CPU machines.

Measured through the whole stack on a 2-core box, llama-server with 8 slots gave 69 tokens/s at 8
clients against 34-43 for in-process llama.cpp (README, "Benchmark"), so it is what `make up` runs
wherever `INFERENCE_ENGINE=auto` would otherwise pick in-process llama.cpp. MLX on Apple Silicon, vLLM
on a GPU box, or a llama-server of your own (LLAMA_SERVER_URL) keep their place; so does an explicit
INFERENCE_ENGINE=llama_cpp.

The worker starts it as its own child (`--spawn-llama-server`, services/worker/sidecar.py), so that it
sees it die, takes the model out of /v1/models at once and restarts it with backoff.
"""

from __future__ import annotations

from pathlib import Path

from services.common.settings import Settings
from services.worker.detect import Facts, choose


def wanted(settings: Settings, facts: Facts, *, binary: Path | None) -> bool:
    """True when the stack should start llama-server: asked for by name without a URL of its own, or
    `auto` would fall to in-process llama.cpp (or find no engine at all) and a llama-server binary is at hand."""
    if settings.llama_server_url:
        return False
    if settings.inference_engine == "llama_server":
        return True
    if settings.inference_engine != "auto" or binary is None:
        return False
    engines = choose("auto", settings.device_type, facts).engines
    return not engines or engines[0] == "llama_cpp"  # `make up` installs llama-server alone by default
