"""MLX (mlx-lm, continuous batching) on the Gemma 3 270M GGUF converted once to an MLX directory.

On Linux this runs mlx[cpu]: the same mlx-lm code path as on a Mac, only slower.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from services.worker.engines.base import Engine
from services.worker.engines.mlx import MLXEngine

SLOTS = 4


def mlx_gemma(gemma_path: Path) -> Path:
    """models/mlx/gemma-3-270m, converted now if `make models-mlx` has not run (about a minute)."""
    models_dir = gemma_path.parent
    target = models_dir / "mlx" / "gemma-3-270m"
    if not (target / "config.json").exists():
        subprocess.run([sys.executable, str(models_dir / "fetch.py"), "--mlx"], check=True)
    return target


@contextlib.contextmanager
def make_engine(gemma_path: Path, workdir: Path) -> Iterator[Engine]:
    engine = MLXEngine(mlx_gemma(gemma_path), slots=SLOTS)
    engine.load()
    try:
        yield engine
    finally:
        engine.unload()
