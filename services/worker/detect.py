"""Which engine and device to run, decided from facts passed in, so every platform is testable.

`Facts.probe()` reads the real machine; tests build `Facts` by hand instead of patching globals.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Facts:
    system: str
    machine: str
    cuda: bool
    rocm: bool
    has_mlx: bool
    has_llama_cpp: bool
    vllm_url: str = ""
    llama_server_url: str = ""

    @classmethod
    def probe(cls, *, vllm_url: str = "", llama_server_url: str = "") -> Facts:
        return cls(
            system=platform.system(),
            machine=platform.machine(),
            cuda=bool(shutil.which("nvidia-smi")) or os.path.exists("/proc/driver/nvidia/version"),
            rocm=bool(shutil.which("rocm-smi")) or os.path.exists("/dev/kfd"),
            has_mlx=importlib.util.find_spec("mlx_lm") is not None,
            has_llama_cpp=importlib.util.find_spec("llama_cpp") is not None,
            vllm_url=vllm_url,
            llama_server_url=llama_server_url,
        )


@dataclass(frozen=True)
class Choice:
    """Engines to try in order, the device, and why: printed by `--check` and logged at start."""

    engines: tuple[str, ...]
    device: str
    reasons: tuple[str, ...] = field(default_factory=tuple)


def apple_silicon(facts: Facts) -> bool:
    return facts.system == "Darwin" and facts.machine in ("arm64", "aarch64")


def choose(requested: str, device_type: str, facts: Facts) -> Choice:
    """The engine order for `INFERENCE_ENGINE` (auto or a name) on the machine `facts` describe."""
    reasons: list[str] = []
    device = device_type
    if device == "auto":
        device = "metal" if apple_silicon(facts) else "cuda" if facts.cuda else "rocm" if facts.rocm else "cpu"
        reasons.append(f"device {device} detected ({facts.system}/{facts.machine})")
    if requested != "auto":
        return Choice((requested,), device, (*reasons, f"INFERENCE_ENGINE={requested} set explicitly"))
    order: list[str] = []
    if apple_silicon(facts):
        if facts.has_mlx:
            order.append("mlx")
            reasons.append("Apple Silicon with mlx-lm installed: MLX first")
        else:
            reasons.append("Apple Silicon but mlx-lm is not installed: skipping MLX")
    if device in ("cuda", "rocm"):
        if facts.vllm_url:
            order.append("vllm")
            reasons.append(f"{device} GPU and a vLLM endpoint ({facts.vllm_url}): vLLM first")
        else:
            reasons.append(f"{device} GPU but VLLM_URL is not set: skipping vLLM")
    if facts.llama_server_url:
        order.append("llama_server")
        reasons.append(f"llama-server at {facts.llama_server_url}: batching llama.cpp")
    if facts.has_llama_cpp:
        order.append("llama_cpp")
        reasons.append("llama-cpp-python installed: in-process llama.cpp")
    if not order:
        reasons.append(
            "no in-process engine is installed: the stack runs llama-server where it is built (`make up`); "
            "`pip install '.[llama-cpp]'` adds in-process llama.cpp"
        )
    return Choice(tuple(order), device, tuple(reasons))
