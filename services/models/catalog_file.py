"""Adding and removing one model entry in models.yaml, keeping the rest of the file as written.

Edits are made on the text (the file's comments are its documentation, and PyYAML would drop them), the result
is validated as a whole before it replaces the file (atomically, keeping its mode), and a lock file keeps two
`add`s from losing each other's entry. API replicas and workers re-read the file when it changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from services.common.catalog import Catalog, CatalogError


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _entry_start(lines: list[str], model_id: str) -> int | None:
    pattern = re.compile(rf"^  (?:{re.escape(model_id)}|\"{re.escape(model_id)}\"|'{re.escape(model_id)}'):\s*(#.*)?$")
    return next((i for i, line in enumerate(lines) if pattern.match(line)), None)


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """The index after the block that begins at `start`: the next non-blank line indented at most `indent`."""
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
            break
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # the blank lines before the next block stay with it
    return end


def without(text: str, model_id: str) -> str:
    lines = text.splitlines(keepends=True)
    start = _entry_start(lines, model_id)
    if start is None:
        return text
    return "".join(lines[:start] + lines[_block_end(lines, start, 2) :])


def with_entry(text: str, model_id: str, body: dict[str, Any]) -> str:
    """`text` with `model_id`'s entry set to `body` (replaced where it was, else at the end of `models:`)."""
    rendered = yaml.safe_dump({model_id: body}, sort_keys=False, allow_unicode=True, width=1000)
    block = [f"  {line}\n" if line else "\n" for line in rendered.rstrip("\n").split("\n")]
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = _entry_start(lines, model_id)
    if start is not None:
        return "".join(lines[:start] + block + lines[_block_end(lines, start, 2) :])
    top = next((i for i, line in enumerate(lines) if re.match(r"^models:\s*(\{\s*\})?\s*(#.*)?$", line)), None)
    if top is None:
        return "".join([*lines, "models:\n", *block])
    lines[top] = "models:\n"
    return "".join(lines[: _block_end(lines, top, 0)] + block + lines[_block_end(lines, top, 0) :])


def write(path: Path, text: str, default: str | None = None) -> Catalog:
    """Validate `text` as a whole catalog, then put it in place of `path` in one rename."""
    catalog = Catalog.from_text(text, default, origin=str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    with contextlib.suppress(FileNotFoundError):
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)
    return catalog


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return "models: {}\n"
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the model catalog ({exc.strerror})") from None
