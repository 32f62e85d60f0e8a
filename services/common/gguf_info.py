"""What a GGUF file says of itself: its architecture, trained context length, chat template and KV-cache shape.

Read from the file's own key/value header (memory-mapped, arrays skipped: a 5 GB file costs no 5 GB of RAM, and
a 262k-token vocabulary well under a second), so the catalog records the context the model was trained for instead
of a guess, `show` can print the template llama-server will render chats with, and a worker can size a model's KV
cache before it loads it (services/worker/budget.py).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class NotGGUF(ValueError):
    """The file is not a GGUF (wrong magic, cut short): said in one line, not a traceback."""


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str | None
    context_length: int | None
    chat_template: str | None
    name: str | None
    layers: int | None = None
    """`<arch>.block_count`: transformer blocks, each holding a K and a V row per token of context."""
    kv_width: int | None = None
    """Values a token puts in one block's K and V caches together: head_count_kv x (key_length + value_length),
    or 2 x embedding_length / head_count x head_count_kv where the file gives no key/value lengths."""


def read(path: Path) -> GGUFInfo:
    fields = _metadata(path)

    def value(key: str) -> object | None:
        return fields.get(key)

    arch = value("general.architecture")
    arch = arch if isinstance(arch, str) else None
    ctx = value(f"{arch}.context_length") if arch else None
    template = value("tokenizer.chat_template")
    name = value("general.name")

    def number(key: str) -> int | None:
        found = value(f"{arch}.{key}") if arch else None
        return int(found) if isinstance(found, int) and not isinstance(found, bool) else None

    return GGUFInfo(
        architecture=arch,
        context_length=int(ctx) if isinstance(ctx, int) else None,
        chat_template=template if isinstance(template, str) else None,
        name=name if isinstance(name, str) else None,
        layers=number("block_count"),
        kv_width=_kv_width(number),
    )


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _metadata(path: Path) -> dict[str, object]:
    """The GGUF's key/value header, its arrays skipped (None): gguf.GGUFReader builds a numpy view of every item
    of every array, and a tokenizer's 262k tokens took it 34 s for Gemma 3 270M, on every load of a worker."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(data)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise NotGGUF(f"{path}: not a readable GGUF file ({exc})") from exc


def _parse(data: mmap.mmap) -> dict[str, object]:
    if data[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    order = (
        "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"
    )  # a big-endian file's version reads byte-swapped
    count = struct.unpack_from(order + "Q", data, 16)[0]
    at = 24

    def take(fmt: str) -> object:
        nonlocal at
        (found,) = struct.unpack_from(order + fmt, data, at)
        at += struct.calcsize(fmt)
        return found

    def text() -> str:
        nonlocal at
        size = take("Q")
        at += size
        if at > len(data):
            raise ValueError("cut short")
        return data[at - size : at].decode("utf-8")

    def item(kind: int) -> object:
        nonlocal at
        if kind in _SCALARS:
            return take(_SCALARS[kind])
        if kind == _STRING:
            return text()
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind}")
        inner, n = take("I"), take("Q")
        if inner in _SCALARS:
            at += n * struct.calcsize(_SCALARS[inner])
        else:
            for _ in range(n):
                item(inner)
        return None

    fields: dict[str, object] = {}
    for _ in range(count):
        key = text()
        fields[key] = item(take("I"))
    if at > len(data):
        raise ValueError("cut short")
    return fields


def _kv_width(number: Callable[[str], int | None]) -> int | None:
    heads, kv_heads = number("attention.head_count"), number("attention.head_count_kv")
    kv_heads = kv_heads or heads  # absent: no grouped-query attention, one KV head per head
    if not kv_heads:
        return None
    k, v = number("attention.key_length"), number("attention.value_length")
    if k and v:
        return kv_heads * (k + v)
    width = number("embedding_length")
    return 2 * (width // heads) * kv_heads if width and heads else None
