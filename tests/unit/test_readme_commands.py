"""Every command the README shows exists and runs (issue 27, item 7).

The README's code (fenced blocks, and inline spans that are commands) is read as a new user reads it: each
`make TARGET` must name a rule the Makefile has, each `python -m MODULE [SUBCOMMAND]` of this repository must
answer `--help` with exit 0, and each `python some/script.py` must exist and answer `--help`. A renamed
target or a moved module then fails here, not on a user's first try.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
_MAKE = re.compile(r"(?:^|[;&|(]\s*|\s)make\s+([^#;&|)]*)")
_PY_MODULE = re.compile(r"(?:^|[\s;&|(/])python3?\s+-m\s+([A-Za-z_][\w.]*)(?:\s+([a-z][a-z-]*)\b)?")
_PY_SCRIPT = re.compile(r"(?:^|[\s;&|(/])python3?\s+((?:\./)?[\w./-]+\.py)\b")


def code_texts(markdown: str) -> list[str]:
    """The fenced blocks' lines, then the inline code spans outside them."""
    lines = [line for block in _FENCE.findall(markdown) for line in block.splitlines()]
    prose = _FENCE.sub("", markdown)
    return lines + _INLINE.findall(prose)


def make_targets(texts: list[str]) -> set[str]:
    """Targets named after `make` (VAR=value and -flags skipped)."""
    found: set[str] = set()
    for text in texts:
        for args in _MAKE.findall(text):
            for word in args.split():
                if "=" not in word and not word.startswith(("-", "$", '"', "'")):
                    found.add(word)
    return found


def makefile_targets(text: str) -> set[str]:
    """Rules (`name:` at the start of a line, not `name :=`) and .PHONY names."""
    targets: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.%-]+(?:[ \t]+[A-Za-z0-9_.%-]+)*)[ \t]*::?(?![=])", line)
        if m and not line.startswith("."):
            targets.update(m.group(1).split())
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
    return targets


def _ours(module: str) -> bool:
    """A module of this repository (services.*, bench, ...), not pip's or another tool's."""
    top = ROOT / module.split(".")[0]
    return (top / "__init__.py").exists() or top.with_suffix(".py").exists()


def python_commands(texts: list[str]) -> set[tuple[str, ...]]:
    """Argument lists for `python`: `-m MODULE [SUBCOMMAND] --help`, `SCRIPT --help`."""
    found: set[tuple[str, ...]] = set()
    for text in texts:
        for module, sub in _PY_MODULE.findall(text):
            if _ours(module):
                found.add(("-m", module, "--help"))
                if sub:
                    found.add(("-m", module, sub, "--help"))
        for script in _PY_SCRIPT.findall(text):
            found.add((script, "--help"))
    return found


TEXTS = code_texts(README.read_text())
MAKE_TARGETS = sorted(make_targets(TEXTS))
PYTHON_COMMANDS = sorted(python_commands(TEXTS))


def test_the_readme_is_read():
    """Guards the parsers themselves: the README's own first commands are found."""
    assert {"up", "test"} <= set(MAKE_TARGETS)
    assert ("-m", "services.models", "add", "--help") in PYTHON_COMMANDS
    assert any(cmd[0].endswith("fetch.py") for cmd in PYTHON_COMMANDS)


def test_parsers_on_known_text():
    texts = code_texts("a `make up UP_EXTRAS=x,y` b\n```bash\nmake -j2 lint test && python -m pip x\n```\n")
    assert make_targets(texts) == {"up", "lint", "test"}
    assert makefile_targets("up: venv\n\t@x\nX := 1\n.PHONY: clean\na b: c\n") == {"up", "clean", "a", "b"}
    assert python_commands([".venv/bin/python -m services.models add x --id y"]) == {
        ("-m", "services.models", "--help"),
        ("-m", "services.models", "add", "--help"),
    }


@pytest.mark.parametrize("target", MAKE_TARGETS)
def test_make_target_exists(target):
    assert target in makefile_targets(MAKEFILE.read_text()), (
        f"README runs `make {target}`; the Makefile has no such rule"
    )


@pytest.mark.parametrize("argv", PYTHON_COMMANDS, ids=" ".join)
def test_python_command_answers_help(argv):
    if not argv[0].startswith("-"):
        assert (ROOT / argv[0]).is_file(), f"README runs `python {argv[0]}`, which does not exist"
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"`python {' '.join(argv)}` exited {done.returncode}: {done.stderr[-600:]}"
    assert "usage" in done.stdout.lower(), f"`python {' '.join(argv)}` printed no usage: {done.stdout[:300]}"
