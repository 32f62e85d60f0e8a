"""`python -m services.worker --check` really loads and generates on each engine here, and a probe that
dies by a signal is reported with the signal and the fix, not as a Python traceback."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from services.worker.selfcheck import _in_child

pytestmark = pytest.mark.engine


def test_check_loads_and_generates_on_each_engine(gemma_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.worker", "--check", "--engine", "auto"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for engine in ("llama_server", "llama_cpp"):
        line = next(ln for ln in done.stdout.splitlines() if f" {engine}:" in ln)
        assert line.strip().startswith("ok") and "tokens at" in line, done.stdout


@pytest.mark.parametrize("sig", [signal.SIGILL, signal.SIGSEGV])
def test_a_probe_killed_by_a_signal_names_it_and_the_fix(sig: signal.Signals) -> None:
    crash = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(sig)})"]
    outcome = _in_child("llama_cpp", "gemma-3-270m", argv=crash)
    assert not outcome.ok and outcome.detail.startswith(f"killed by {sig.name}")
    assert "portable" in outcome.fix and "make up" in outcome.fix
    assert "FAIL" in outcome.line() and "fix:" in outcome.line()


def test_a_probe_that_fails_cleanly_reports_its_message() -> None:
    failing = [sys.executable, "-c", 'import json; print(json.dumps({"detail": "model file missing"})); exit(1)']
    outcome = _in_child("llama_cpp", "gemma-3-270m", argv=failing)
    assert not outcome.ok and outcome.detail == "model file missing"
