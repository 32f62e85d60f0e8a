"""What a GGUF file says of itself: its architecture, trained context length and chat template.

Read from the file's own metadata (the `gguf` package memory-maps it, so a 5 GB file costs no 5 GB of RAM), so
the catalog records the context the model was trained for instead of a guess, and `show` can print the template
llama-server will render chats with.
"""

from __future__ import annotations

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
    return GGUFInfo(
        architecture=arch,
        context_length=int(ctx) if isinstance(ctx, int) else None,
        chat_template=template if isinstance(template, str) else None,
        name=name if isinstance(name, str) else None,
    )
