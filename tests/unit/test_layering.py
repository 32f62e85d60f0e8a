"""The benchmark sits above what we ship: `bench` may import `services`, never the reverse.

The `services` wheel and the images carry only services/ (pyproject's packages.find, .dockerignore), so a
module there that imported `bench` would work from a checkout and fail in every install.
"""

from __future__ import annotations

import ast
import re
import tomllib

import pytest
from setuptools import find_packages

from tests.conftest import ROOT

MODULE_PATH = re.compile(r"bench(\.\w+)+")
"""A string naming a bench module, as `python -m bench.instant_worker` or importlib would take it."""


def bench_imports(source: str, filename: str = "<source>") -> list[str]:
    """Each place in `source` that imports the bench package, or names one of its modules to run: `line: text`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.fullmatch(node.value):
            names = [node.value]
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if name == "bench" or name.startswith("bench.")]
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import bench",
        "import bench.instant_engine as ie",
        "import os, bench.gateway",
        "from bench import options",
        "from bench.instant_engine import InstantEngine",
        "def f():\n    from bench.session import Session",
        'argv = ["-m", "bench.instant_worker"]',
    ],
)
def test_each_way_of_reaching_bench_is_seen(source: str) -> None:
    assert bench_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "import benchmark",
        "from benchmarks import x",
        "from services.common import ports",
        "from . import bench",
        'key = "bench"',
        'doc = "bench.py is a file"',
    ],
)
def test_what_is_not_bench_is_not_flagged(source: str) -> None:
    assert bench_imports(source) == []


def test_nothing_under_services_imports_bench() -> None:
    files = sorted((ROOT / "services").rglob("*.py"))
    assert len(files) > 50, "services/ was not found where the test looks"
    offenders = {
        str(path.relative_to(ROOT)): hits
        for path in files
        if (hits := bench_imports(path.read_text(encoding="utf-8"), str(path)))
    }
    assert offenders == {}, f"services/ must not import the benchmark: {offenders}"


def test_the_wheel_and_the_images_leave_the_bench_out() -> None:
    assert (ROOT / "bench" / "__main__.py").is_file() and not (ROOT / "services" / "bench").exists()
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = find_packages(ROOT, include=find["include"], exclude=find.get("exclude", ()))
    assert "services" in shipped and [p for p in shipped if "bench" in p.split(".")] == []
    rules = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()[:1] not in ("", "#")]
    assert rules[0] == "*" and [r for r in rules if r.startswith("!") and "bench" in r] == [], rules
