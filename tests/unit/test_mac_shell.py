"""The Mac path runs on macOS's own bash 3.2 and BSD tools (issue 27, item 7).

On a Mac the README runs `make venv-up` (the Makefile's recipes under SHELL=/bin/bash, which is 3.2 there)
and through it services/stack/build_llama.sh; compose's containers and the native MLX worker are Python or
Linux. A bash-4 construct or a GNU-only tool in those scripts works on every Linux CI and fails only on
the Mac, so they are checked here by reading them (Debian ships no bash 3.2 to run them with).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BASH4 = {
    "mapfile": r"\bmapfile\b",
    "readarray": r"\breadarray\b",
    "associative array": r"\b(?:declare|local|typeset)\s+-[a-zA-Z]*A",
    "case modification ${v,,} ${v^^}": r"\$\{[#!]?[A-Za-z_][A-Za-z0-9_]*(?:\[[^]]*\])?(?:,,?|\^\^?)[^}]*\}",
    "&>> redirection": r"&>>",
    "|& pipe": r"\|&",
    "negative array index": r"\$\{[A-Za-z_][A-Za-z0-9_]*\[-\d+\]\}",
    "coproc": r"\bcoproc\b",
    "wait -n": r"\bwait\s+-n\b",
    "${v@Q} transformations": r"\$\{[A-Za-z_][A-Za-z0-9_]*@[QEPAaUuLK]\}",
    "globstar / lastpipe": r"shopt\s+-s\s+(?:globstar|lastpipe)",
    "EPOCHSECONDS / EPOCHREALTIME": r"\bEPOCH(?:SECONDS|REALTIME)\b",
    "readlink -f": r"\breadlink\s+-f\b",
}
GNU_ONLY = {
    "nproc (no such tool on macOS)": r"(?<![\w.])nproc\b",
    "sha256sum (macOS has shasum)": r"\bsha256sum\b",
    "sed -i without a suffix (BSD sed reads the next word as one)": r"\bsed\s+-i\s",
    "stat -c (BSD stat has -f)": r"\bstat\s+-c\b",
    "date -d (BSD date has -j -f)": r"\bdate\s+-d\b",
    "find -printf": r"\bfind\b[^\n]*-printf\b",
}


MAC_PATH = [ROOT / "Makefile", ROOT / "services/stack/build_llama.sh"]
"""What the README's Mac section runs on the host: `make venv-up` and the script it calls."""


def mac_scripts() -> list[Path]:
    """The Makefile and every shell script its recipes name: a Mac user may run any target, all in bash 3.2."""
    makefile = ROOT / "Makefile"
    named = sorted(set(re.findall(r"(?<![\w/])([\w./-]+\.sh)\b", makefile.read_text())))
    scripts = [makefile, *(ROOT / name for name in named)]
    return [s for s in scripts if s.exists()]


def code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines without their comments (a comment may name what it avoids); a heredoc of Python is skipped."""
    out, heredoc = [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        m = re.search(r"<<-?\s*'?\"?(\w+)", line)
        if m:
            heredoc = m.group(1)
        code = re.sub(r"(^|\s)#.*$", "", line)
        if code.strip():
            out.append((n, code))
    return out


def findings(path: Path, patterns: dict[str, str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{n}: {what}: {code.strip()}"
        for n, code in code_lines(path)
        for what, pattern in patterns.items()
        if re.search(pattern, code)
    ]


def test_the_mac_path_scripts_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in mac_scripts()}
    assert {"Makefile", "services/stack/build_llama.sh"} <= names


BAD = ['mapfile -t reqs < <(x)', 'echo "${name,,}"', "declare -A seen", "x &>> log", 'echo "${a[-1]}"',
       "jobs=$(nproc)", "x | sha256sum | cut -c1-16", "sed -i 's/a/b/' f"]  # fmt: skip


@pytest.mark.parametrize("bad", BAD)
def test_the_patterns_catch_what_they_name(tmp_path, bad):
    script = tmp_path / "x.sh"
    script.write_text(f"#!/usr/bin/env bash\n# mapfile in a comment is fine\n{bad}\n")
    hits = [what for _, code in code_lines(script) for what, p in {**BASH4, **GNU_ONLY}.items() if re.search(p, code)]
    assert len(hits) == 1, (bad, hits)


@pytest.mark.parametrize("script", mac_scripts(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_bash4_constructs(script):
    assert findings(script, BASH4) == []


@pytest.mark.parametrize("script", MAC_PATH, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_gnu_only_tools_on_the_mac_path(script):
    assert findings(script, GNU_ONLY) == []
