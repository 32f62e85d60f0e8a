"""A Docker engine for the compose test: the one that answers, else Debian's dockerd started here, or a reason.

`make test` installs Debian's `docker.io` (dockerd, containerd, runc). Nothing starts it as a service: where no
engine answers and we are root, the test starts dockerd itself, as its own child, and stops it (by its PID)
when done. Its images stay in /var/lib/docker, so the next run builds warm.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.procs import stop, which


def answers(timeout: float = 10) -> bool:
    """`docker info` reaches a daemon."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=timeout
        )
        return info.returncode == 0 and bool(info.stdout.strip())
    return False


def why_none() -> str | None:
    """None when an engine answers or one can be started here; else the reason there is none."""
    if which("docker") is None:
        return "no `docker` client here"
    if answers():
        return None
    if which("dockerd") is None:
        return "no Docker engine answers and dockerd is not installed (`make test` installs Debian's docker.io)"
    if os.geteuid() != 0:
        return "no Docker engine answers, and dockerd can be started only as root here"
    return None


@contextlib.contextmanager
def engine(log: Path, timeout: float = 60) -> Iterator[None]:
    """An engine that answers for the duration: the running one (left alone), else a dockerd of ours."""
    if answers():
        yield
        return
    dockerd = which("dockerd")
    assert dockerd is not None, why_none()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not answers(timeout=5):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dockerd did not start (exit {proc.poll()}); its log ends:\n{tail}")
            time.sleep(0.5)
        yield
    finally:
        stop(proc, timeout=60)  # dockerd stops its containers first; the test has removed its own by then
