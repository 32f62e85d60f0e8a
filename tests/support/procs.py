"""Start and stop the real servers tests need, on free ports, stopping only what we started (by PID)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def stat_fields(proc: Path) -> list[str]:
    """The fields of `proc`/stat (proc: /proc/<pid> or /proc/<pid>/task/<tid>) after the command name, the
    state first: the name may hold spaces and parentheses, so the split is at its last ')'."""
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code < 500


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group we created, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def running(
    cmd: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own process group with output to `log`; always stopped on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop(proc)


def which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def redis_command(server: str, port: int, data: Path, *, password: str | None = None) -> list[str]:
    """A throwaway redis-server on loopback: no persistence, its files under `data`."""
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if password:
        cmd += ["--requirepass", password]
    return [*cmd, "--dir", str(data)]
