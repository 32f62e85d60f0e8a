"""How much memory a worker may fill with models, and what one model will take there before it is loaded.

A worker that loads models on request must know, before it starts a second llama-server, whether both fit: an
out-of-memory kill takes every model of the box with it. The cost of a model is its weights (the GGUF's size, all
parts of a split one) plus its KV cache (slots x context x layers x K/V width x 2 bytes, read from the GGUF's own
metadata) plus a fixed allowance for compute buffers. The context a model runs at is the one it asks for (the
catalog's `context`, else what the file was trained for), capped by N_CTX when set, and by what the budget leaves
once the weights are in: a 128k-token model on a small box runs at the context that fits, instead of failing.

The budget is MEMORY_BUDGET (`4GiB`, `512MB`, bytes) or `auto`: 80 % of the memory free when the worker starts
(the cgroup's limit inside a container), so the engine, the OS and the gateway keep the rest.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ByteSize, TypeAdapter, ValidationError

from services.common.gguf_info import GGUFInfo, NotGGUF, read

log = logging.getLogger(__name__)

KV_BYTES = 2
"""Bytes per cached value: llama.cpp's default KV cache type is f16."""
OVERHEAD = 96 * 2**20
"""Compute buffers, the tokenizer and the server itself, beyond weights and KV cache; llama-server for Gemma 3
270M at 2 x 2048 tokens measured 70-90 MiB over its weights and cache."""
CONTEXT_STEP = 256
MIN_CONTEXT = 256
AUTO_SHARE = 0.8
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<n>\d{5})-of-(?P<total>\d{5})\.gguf$")


class DoesNotFit(ValueError):
    """A model needs more than the whole budget; the message gives both figures."""


@dataclass(frozen=True)
class Cost:
    weights: int
    kv: int
    context: int
    """Tokens of context each slot gets."""

    @property
    def total(self) -> int:
        return self.weights + self.kv + OVERHEAD


def parse_budget(value: str, available: int | None = None) -> int:
    """Bytes for MEMORY_BUDGET: `auto` (80 % of `available`, default the memory free now) or a size."""
    if value.strip().lower() == "auto":
        return int(AUTO_SHARE * (available if available is not None else memory_available()))
    try:
        return int(TypeAdapter(ByteSize).validate_python(value.strip()))
    except ValidationError:
        raise ValueError(f"MEMORY_BUDGET {value!r}: expected `auto` or a size such as 4GiB or 512MB") from None


def memory_available() -> int:
    """MemAvailable, or the cgroup's room when a container limit is lower."""
    free = _meminfo("MemAvailable") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, free)


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def weights_size(path: Path) -> int:
    """Bytes on disk: a file (every part of a split GGUF) or a directory (MLX weights)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    split = _SPLIT.match(path.name)
    if split:
        total = int(split["total"])
        parts = [path.with_name(f"{split['stem']}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
        return sum(p.stat().st_size for p in parts if p.exists())
    return path.stat().st_size


def cost(path: Path, *, slots: int, wanted: int, cap: int | None, budget: int) -> Cost:
    """What `path` will take with `slots` slots, at the largest context up to `wanted` (and `cap`) that fits in
    `budget` with the weights; DoesNotFit when not even MIN_CONTEXT does."""
    weights = weights_size(path)
    per_token = slots * _kv_per_token(path)
    context = min(wanted, cap) if cap else wanted
    room = budget - weights - OVERHEAD
    if per_token:
        fits = room // per_token
        if fits < MIN_CONTEXT:
            need = weights + OVERHEAD + MIN_CONTEXT * per_token
            raise DoesNotFit(
                f"{path.name} needs at least {need / 2**20:.0f} MiB ({weights / 2**20:.0f} MiB of weights, "
                f"{slots} slot(s) of {MIN_CONTEXT} tokens) and the memory budget is {budget / 2**20:.0f} MiB"
            )
        if fits < context:
            context = max(MIN_CONTEXT, fits // CONTEXT_STEP * CONTEXT_STEP)
    elif room < 0:
        raise DoesNotFit(
            f"{path.name} needs {(weights + OVERHEAD) / 2**20:.0f} MiB; the memory budget is {budget / 2**20:.0f} MiB"
        )
    return Cost(weights=weights, kv=per_token * context, context=context)


@functools.lru_cache(maxsize=64)
def _gguf(path: Path, size: int, mtime_ns: int) -> GGUFInfo | None:
    """The file's metadata, read once per version of the file (a swap loads the same files again and again)."""
    try:
        return read(path)
    except NotGGUF as exc:
        log.warning("%s; its KV cache is not counted in the memory budget", exc)
        return None


def _info(path: Path) -> GGUFInfo | None:
    if path.is_dir() or path.suffix != ".gguf":
        return None
    stat = path.stat()
    return _gguf(path, stat.st_size, stat.st_mtime_ns)


def _kv_per_token(path: Path) -> int:
    """Bytes one token of context takes in one slot's KV cache; 0 where the file says nothing of it."""
    info = _info(path)
    return (info.layers or 0) * (info.kv_width or 0) * KV_BYTES if info else 0


def trained_context(path: Path) -> int | None:
    """The GGUF's `<arch>.context_length`, or None (not a GGUF)."""
    info = _info(path)
    return info.context_length if info else None
