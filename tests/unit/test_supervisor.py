"""The Supervisor on real child processes: deaths are described by signal, restarted with backoff,
counted into a crash loop, and a stop is never taken for a crash."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from services.common.supervisor import History, Policy, State, Supervisor, describe_exit, hint
from tests.support.procs import stat_fields

FAST = Policy(first=0.05, cap=0.2, window=30, loop_after=3, stable_after=30, ready_timeout=10)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_exits_are_described_by_signal_and_status() -> None:
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV (segmentation fault)"
    assert describe_exit(-signal.SIGILL) == "killed by SIGILL (illegal instruction)"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert describe_exit(3) == "exited with status 3"
    assert "portable" in (hint(-signal.SIGILL) or "") and hint(1) is None


def test_history_reads_what_the_supervisor_passed() -> None:
    env = {"SUPERVISED_RESTARTS": "2", "SUPERVISED_RECENT_DEATHS": "3", "SUPERVISED_LAST_EXIT": "killed by SIGKILL"}
    assert History.from_env(env) == History(2, 3, "killed by SIGKILL")
    assert History.from_env({}) == History()


def test_a_crashing_child_is_restarted_and_becomes_a_crash_loop(tmp_path: Path) -> None:
    downs: list[str] = []
    ups = threading.Semaphore(0)
    marker = tmp_path / "runs"
    # each run appends a line, serves briefly, then dies by SIGSEGV
    code = (
        f"import os, signal, time; open({str(marker)!r}, 'a').write(os.environ['SUPERVISED_RESTARTS'] + '\\n');"
        " time.sleep(0.3); os.kill(os.getpid(), signal.SIGSEGV)"
    )
    sup = Supervisor("crasher", python(code), on_down=downs.append, on_up=ups.release, policy=FAST)
    sup.start()
    try:
        deadline = time.monotonic() + 20
        while len(downs) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert downs[:3] == ["killed by SIGSEGV (segmentation fault)"] * 3
        assert sup.state in (State.CRASH_LOOP, State.STARTING, State.SERVING)
        assert sup.recent_deaths() >= 3 and sup.restarts >= 2
        assert sup.last_exit == "killed by SIGSEGV (segmentation fault)"
        assert ups.acquire(timeout=5)
    finally:
        sup.stop(grace=5)
    runs = marker.read_text().split()
    assert runs[:3] == ["0", "1", "2"]  # the child is told how often it was restarted


def test_crash_loop_state_is_set_on_the_third_death() -> None:
    states: list[State] = []
    sup = Supervisor("dies", python("import sys; sys.exit(7)"), policy=FAST)
    sup.on_down = lambda _reason: states.append(sup.state)
    sup.start()
    try:
        deadline = time.monotonic() + 20
        while len(states) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sup.stop(grace=5)
    assert states[:3] == [State.RESTARTING, State.RESTARTING, State.CRASH_LOOP]
    assert sup.last_exit == "exited with status 7"


def test_backoff_doubles_up_to_its_cap() -> None:
    sup = Supervisor("x", python("pass"), policy=Policy(first=1, cap=8, window=60, stable_after=60))
    sup.started_at = time.monotonic()
    delays = []
    for _ in range(6):
        sup._deaths.add()
        delays.append(sup._delay())
    assert delays == [1, 2, 4, 8, 8, 8]


def test_stop_is_not_a_crash() -> None:
    downs: list[str] = []
    sup = Supervisor("sleeper", python("import time; time.sleep(60)"), on_down=downs.append, policy=FAST)
    sup.start()
    assert sup.wait_ready(5)
    pid = sup.pid
    code = sup.stop(grace=5)
    assert code == -signal.SIGTERM and sup.state == State.STOPPED and not downs
    time.sleep(0.3)
    assert sup.pid == pid  # nothing was started again


def test_ready_is_waited_for(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    sup = Supervisor(
        "slow", python(f"import time, pathlib; time.sleep(0.5); pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"),
        ready=flag.exists, policy=FAST,
    )  # fmt: skip
    sup.start()
    try:
        assert sup.state == State.STARTING
        assert sup.wait_ready(10) and sup.state == State.SERVING
    finally:
        sup.stop(grace=5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_the_child_dies_with_its_supervisor(tmp_path: Path) -> None:
    """A supervisor killed without a word (SIGKILL) must not leave its child running."""
    import subprocess

    pidfile = tmp_path / "child.pid"
    script = (
        "import sys, time; from services.common.supervisor import Supervisor;"
        f"s = Supervisor('c', [sys.executable, '-c', 'import time; time.sleep(60)']); s.start();"
        f"open({str(pidfile)!r}, 'w').write(str(s.pid)); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    parent.kill()
    parent.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def _state(pid: int) -> str:
    try:
        return stat_fields(Path(f"/proc/{pid}"))[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) == "Z":
            return True
        time.sleep(0.05)
    return False


def test_what_a_dead_child_leaves_in_its_group_is_killed(tmp_path: Path) -> None:
    """A master killed by SIGKILL leaves its workers (nginx's, gunicorn's) holding its listening socket, so the
    next start could not bind: they are killed before the restart, and what a stopped child leaves at the stop."""
    pids = tmp_path / "grandchildren"
    code = (
        "import subprocess, time;"
        f"p = subprocess.Popen(['sleep', '60']); open({str(pids)!r}, 'a').write(f'{{p.pid}}\\n'); time.sleep(60)"
    )
    ups = threading.Semaphore(0)
    sup = Supervisor("master", python(code), on_up=ups.release, policy=FAST)
    sup.start()
    try:
        assert ups.acquire(timeout=5)
        deadline = time.monotonic() + 5
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = int(pids.read_text().split()[0])
        os.kill(sup.pid, signal.SIGKILL)
        assert ups.acquire(timeout=10), "restarted"
        assert _gone(first), "the dead master's worker outlived it"
        deadline = time.monotonic() + 5
        while len(pids.read_text().split()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        second = int(pids.read_text().split()[1])
    finally:
        sup.stop(grace=5)
    assert _gone(second), "the stopped master's worker outlived it"
