"""The native stack's process list for unit tests: `prepare()` on a copy of the catalog, weights faked by name,
a stand-in llama-server binary and a Linux CPU box, so a test reads which processes would start and how."""

from __future__ import annotations

import shutil
from pathlib import Path

from services.common.settings import ROOT, Settings
from services.stack.procfile import Proc, prepare
from services.worker.detect import Facts

BINARY = Path("/usr/bin/true")
LINUX = Facts("Linux", "x86_64", cuda=False, rocm=False, has_mlx=False, has_llama_cpp=True)


def stack_procs(
    tmp_path: Path, binary: Path | None = BINARY, *, weights: tuple[str, ...] = (), **changes: object
) -> dict[str, Proc]:
    """name -> Proc; `weights`: GGUF file names to fake under the models dir; `changes`: Settings fields."""
    models = tmp_path / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "models" / "models.yaml", models / "models.yaml")
    for name in weights:
        (models / name).write_bytes(b"GGUF")
    settings = Settings(
        run_dir=tmp_path / "run", log_dir=tmp_path / "logs", redis_password="pw", models_dir=models,
        models_file=models / "models.yaml", **changes,
    )  # fmt: skip
    stack = prepare(settings, base_env={}, facts=LINUX, find_llama_server=lambda: binary)
    return {p.name: p for p in stack.procs}
