"""Start the benchmark's own server processes and stop exactly those, by PID, whatever happens.

Each process gets its own session (so its process group id is its PID): stopping signals that group,
which takes gunicorn's and nginx's workers along and touches nothing the bench did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

STOP_GRACE_S = 20.0


class StartFailed(RuntimeError):
    """A process exited or never became ready; the message names it and its log."""


class Launcher:
    """Processes in start order; `stop_all` stops them newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log(name).open("ab") as out:
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def wait_ready(self, name: str, check: Callable[[], bool], timeout: float) -> None:
        """Poll `check` until it is true; fail early when the process has already exited."""
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartFailed(f"{name} exited with {proc.returncode}; see {self.log(name)}")
            if _quietly(check):
                return
            time.sleep(0.1)
        raise StartFailed(f"{name} not ready after {timeout:.0f}s; see {self.log(name)}")

    def stop(self, name: str, grace: float = STOP_GRACE_S) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_all(self) -> None:
        """Stop everything; a SIGTERM or Ctrl-C meanwhile is held until the last process is stopped, then
        delivered (raised mid-way, it left the rest of the stack running, orphaned)."""
        held: list[int] = []
        wanted = (signal.SIGTERM, signal.SIGINT)
        before = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in wanted}
        try:
            for name in reversed(list(self.procs)):
                self.stop(name)
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
            for signum in held[:1]:
                signal.raise_signal(signum)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the group our child leads (its pgid is its pid, from start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _quietly(check: Callable[[], bool]) -> bool:
    """A readiness probe that fails (refused, 503, bad JSON) just means 'not yet'."""
    try:
        return bool(check())
    except Exception:
        return False
