"""What a GGUF file says of itself: its architecture, trained context length, chat template and KV-cache shape.

Read from the file's own metadata (the `gguf` package memory-maps it, so a 5 GB file costs no 5 GB of RAM), so
the catalog records the context the model was trained for instead of a guess, `show` can print the template
llama-server will render chats with, and a worker can size a model's KV cache before it loads it
(services/worker/budget.py).
"""

from __future__ import annotations

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
    import gguf  # imported here: the CLI's list/remove need no numpy

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise NotGGUF(f"{path}: not a readable GGUF file ({exc})") from exc

    def value(key: str) -> object | None:
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    arch = value("general.architecture")
    arch = arch if isinstance(arch, str) else None
    ctx = value(f"{arch}.context_length") if arch else None
    template = value("tokenizer.chat_template")
    name = value("general.name")

    def number(key: str) -> int | None:
        found = value(f"{arch}.{key}") if arch else None
        return int(found) if isinstance(found, int) else None

    return GGUFInfo(
        architecture=arch,
        context_length=int(ctx) if isinstance(ctx, int) else None,
        chat_template=template if isinstance(template, str) else None,
        name=name if isinstance(name, str) else None,
        layers=number("block_count"),
        kv_width=_kv_width(number),
    )


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
