"""Find the system servers the native stack runs; Debian puts some in /usr/sbin, off a plain user's PATH."""

from __future__ import annotations

import os
import shutil


class MissingBinary(RuntimeError):
    """A server the stack needs is not installed; the message says how to install it."""


def which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def require(name: str) -> str:
    path = which(name)
    if path is None:
        raise MissingBinary(f"{name} is not installed: run `make system` (services/stack/install_system.sh)")
    return path
