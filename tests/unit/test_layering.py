"""The benchmark sits above what we ship: `bench` may import `services`, never the reverse.

The `services` wheel and the images carry only services/ (pyproject's packages.find, .dockerignore), so a
module there that imported `bench` would work from a checkout and fail in every install.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

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


# Import circles and the API's floors. Every import counts: one inside a function or under TYPE_CHECKING still
# says that each module needs the other, which is the tangle (a change to one reaches the other) whether or not
# Python's import order happens to survive it.

API_FLOORS = {"routes": {"pipeline", "limits", "observability"}, "pipeline": {"limits", "observability"}}
"""Which of services/api's folders each may import: routes over the pipeline over limits and observability;
limits and observability import none of the others, and no folder imports the top (app, wsgi, errors)."""


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports anywhere in its text (`from p import m` names module m)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                targets |= {
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                }
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: each set of modules that reach one another (a strongly connected component of more
    than one module), sorted; Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    part = stack[stack.index(node) :]
                    del stack[stack.index(node) :]
                    if len(part) > 1:
                        found.append(sorted(part))
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                work.append((target, iter(sorted(graph.get(target, ())))))
            elif target in stack:
                low[node] = min(low[node], index[target])
    return sorted(found)


def test_a_circle_is_found_however_it_is_imported(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for init in (pkg / "__init__.py", pkg / "sub" / "__init__.py"):
        init.write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import x\nfrom . import e\n")
    (pkg / "e.py").write_text("import os\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.d"] == {"pkg.a", "pkg.e"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert circles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert circles({"x": {"y"}, "y": {"x", "z"}, "z": {"w"}, "w": {"z"}, "v": set()}) == [["w", "z"], ["x", "y"]]


def test_no_import_circles_in_services() -> None:
    graph = import_graph(ROOT, "services")
    assert len(graph) > 100 and "services.api.pipeline.gateway" in graph, "services/ was not read"
    assert circles(graph) == []


def test_the_api_folders_import_only_downwards() -> None:
    graph = import_graph(ROOT, "services")
    folders = {name.split(".")[2] for name in graph if name.count(".") == 3 and name.startswith("services.api.")}
    assert folders >= {"routes", "pipeline", "limits", "observability"}, folders
    wrong = []
    for name, targets in graph.items():
        if not name.startswith("services.api.") or name.count(".") < 3:
            continue
        own = name.split(".")[2]
        for target in targets:
            parts = target.split(".")
            if parts[:2] == ["services", "api"] and (len(parts) < 4 or parts[2] not in {own, *API_FLOORS.get(own, ())}):
                wrong.append(f"{name} -> {target}")
    assert wrong == [], "services/api: routes > pipeline > limits, observability; never upwards or sideways"


def test_the_api_and_the_worker_stay_apart() -> None:
    """The API replicas and the workers share only services.common (and keys, for the API); the shared floor
    imports neither."""
    graph = import_graph(ROOT, "services")
    apart = {
        "services.api": ("services.worker", "services.stack", "services.models"),
        "services.worker": ("services.api",),
    }
    apart["services.common"] = ("services.api", "services.worker", "services.stack", "services.keys", "services.models")
    wrong = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        for top, banned in apart.items()
        if name.startswith(top + ".")
        for target in targets
        if target.startswith(banned)
    ]
    assert wrong == []
