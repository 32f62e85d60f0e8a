"""Keep one child process running: start it, see it die, say why in one line, restart it with backoff.

The worker supervises its llama-server sidecar with this, the native stack's launcher runs each of its
processes under one (services/stack/supervise.py), and the worker also runs under one inside
services/stack/respawn.py, which removes a dead worker's registry record. A child that dies several times
in a short window is in a crash loop: the state says so, and the backoff grows to its cap instead of
hammering a machine that cannot run it.

Each child leads a process group of its own. What is left in that group when the child dies (nginx's or
gunicorn's workers when their master was killed, still holding the listening socket) is killed before
the next start, which would otherwise fail to bind its port, and after a stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)

_SIGNAL_MEANING = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGILL: "illegal instruction",
    signal.SIGBUS: "bus error",
    signal.SIGABRT: "aborted",
    signal.SIGKILL: "killed; the kernel's OOM killer does this when memory runs out",
    signal.SIGFPE: "arithmetic fault",
}
_BUILD_HINT = (
    "a native build that uses CPU instructions this machine lacks dies like this: rebuild llama.cpp portable "
    "with `rm -rf ~/.cache/inference-service/wheels .venv && make up` (see README, Portable builds)"
)


def describe_exit(returncode: int) -> str:
    """'killed by SIGSEGV (segmentation fault)' or 'exited with status 1': what an operator greps for."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"killed by signal {-returncode}"
        meaning = _SIGNAL_MEANING.get(sig)
        return f"killed by {sig.name}" + (f" ({meaning})" if meaning else "")
    return f"exited with status {returncode}"


def hint(returncode: int) -> str | None:
    """What to do about it, where the exit says more than 'it died'."""
    if returncode in (-signal.SIGILL, -signal.SIGSEGV):
        return _BUILD_HINT
    return None


def _die_with_parent() -> None:
    """The child runs in its own session, so a Ctrl-C or a supervisor's group SIGTERM reaches only us and
    we stop it after our drain; on Linux the kernel still kills it should we die without a word (SIGKILL)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a dead child's process group. Linux does not reuse a PID while a group of
    that number has a member, so this never reaches a stranger."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class State(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    RESTARTING = "restarting"
    CRASH_LOOP = "crash_loop"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Policy:
    """Restart delays double from `first` to `cap`; `loop_after` deaths within `window` s is a crash loop;
    a child that stayed up `stable_after` s starts again from `first`."""

    first: float = 1.0
    cap: float = 30.0
    window: float = 60.0
    loop_after: int = 3
    stable_after: float = 60.0
    ready_timeout: float = 120.0


@dataclass(frozen=True)
class History:
    """What a supervised process was told of its own past (the env its Supervisor set), for its record."""

    restarts: int = 0
    recent_deaths: int = 0
    last_exit: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> History:
        def number(name: str) -> int:
            value = env.get(name, "")
            return int(value) if value.isdigit() else 0

        return cls(
            number("SUPERVISED_RESTARTS"), number("SUPERVISED_RECENT_DEATHS"), env.get("SUPERVISED_LAST_EXIT", "")
        )


class Deaths:
    """When a process died, kept for `window` seconds: the crash-loop count and the backoff's exponent."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._times: deque[float] = deque()

    def add(self) -> int:
        """Record a death now; returns the deaths within the window."""
        self._times.append(time.monotonic())
        return self.recent()

    def recent(self) -> int:
        cutoff = time.monotonic() - self.window
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
        return len(self._times)

    def only_the_last(self) -> None:
        """Forget all but the latest: the process had run stably before it."""
        while len(self._times) > 1:
            self._times.popleft()


def answers(check: Callable[[], bool]) -> bool:
    """A readiness or health check that raises (refused, reset, timed out) is a 'no', not an error."""
    try:
        return bool(check())
    except Exception:
        return False


class Supervisor:
    """One child process kept alive by a watcher thread.

    `ready()` is polled after each start until it answers True (a sidecar's /health); then `on_up()`.
    `on_down(reason)` runs as soon as the child is seen dead, before the backoff, so the owner can stop
    routing work to it at once.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] = lambda: True,
        on_up: Callable[[], None] = lambda: None,
        on_down: Callable[[str], None] = lambda _reason: None,
        policy: Policy | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.ready = ready
        self.on_up = on_up
        self.on_down = on_down
        self.policy = policy or Policy()
        self.state = State.STOPPED
        self.restarts = 0
        self.last_exit: str | None = None
        self.proc: subprocess.Popen | None = None
        self.started_at = time.monotonic()
        self._deaths = Deaths(self.policy.window)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def recent_deaths(self) -> int:
        return self._deaths.recent()

    def start(self) -> None:
        self._stop.clear()
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the child serves (True) or `timeout` passes / it is stopped (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.state == State.SERVING:
                return True
            time.sleep(0.1)
        return self.state == State.SERVING

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace`; no restart follows. Returns the child's exit code."""
        self._stop.set()  # before the lock: a restart under way either sees it or has set proc by now
        with self._lock:
            proc = self.proc
        code = None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                code = proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        elif proc is not None:
            code = proc.returncode
        if proc is not None:
            kill_group(proc.pid)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(grace)
        self.state = State.STOPPED
        return code

    def _spawn(self) -> bool:
        """Start the child; False when a stop came first (checked under the lock stop() reads proc with)."""
        out = self.log_path.open("ab") if self.log_path else None  # None: the child writes to our output
        try:
            with self._lock:
                if self._stop.is_set():
                    return False
                self.proc = subprocess.Popen(
                    self.argv,
                    stdout=out,
                    stderr=subprocess.STDOUT if out else None,
                    env=self._child_env(),
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        finally:
            if self.log_path:
                out.close()
        self.state = State.STARTING
        self.started_at = time.monotonic()
        log.info("%s started (pid %d)", self.name, self.proc.pid)
        return True

    def _child_env(self) -> dict[str, str]:
        """The child learns how often it was restarted and why (the worker publishes it in its record)."""
        env = dict(os.environ if self.env is None else self.env)
        env["SUPERVISED_RESTARTS"] = str(self.restarts)
        env["SUPERVISED_RECENT_DEATHS"] = str(self.recent_deaths())
        env["SUPERVISED_LAST_EXIT"] = self.last_exit or ""
        return env

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._await_ready()
            assert self.proc is not None
            code = self.proc.wait()
            if self._stop.is_set():
                return
            kill_group(self.proc.pid)
            self._died(code)
            delay = self._delay()
            if self._stop.wait(delay):
                return
            self.restarts += 1
            if not self._spawn():
                return

    def _await_ready(self) -> None:
        deadline = time.monotonic() + self.policy.ready_timeout
        assert self.proc is not None
        while self.proc.poll() is None and not self._stop.is_set():
            if answers(self.ready):
                self.state = State.SERVING
                log.info("%s (pid %d) is serving", self.name, self.proc.pid)
                self.on_up()
                return
            if time.monotonic() > deadline:
                log.error(
                    "%s (pid %d) not ready after %.0f s; killing it",
                    self.name,
                    self.proc.pid,
                    self.policy.ready_timeout,
                )
                self.proc.kill()
                return
            self._stop.wait(0.2)

    def _died(self, code: int) -> None:
        now = time.monotonic()
        uptime = now - self.started_at
        deaths = self._deaths.add()
        self.last_exit = describe_exit(code)
        looping = deaths >= self.policy.loop_after
        self.state = State.CRASH_LOOP if looping else State.RESTARTING
        advice = hint(code)
        log.error(
            "%s (pid %d) %s after %.1f s%s; restart %d%s",
            self.name,
            self.proc.pid if self.proc else -1,
            self.last_exit,
            uptime,
            f" [crash loop: {deaths} deaths in {self.policy.window:.0f} s]" if looping else "",
            self.restarts + 1,
            f"; {advice}" if advice else "",
        )
        self.on_down(self.last_exit)

    def _delay(self) -> float:
        """Exponential in the deaths of the current window; a child that had run stably starts afresh."""
        if time.monotonic() - self.started_at >= self.policy.stable_after:
            self._deaths.only_the_last()
        n = max(1, self._deaths.recent())
        return min(self.policy.cap, self.policy.first * 2 ** (n - 1))
