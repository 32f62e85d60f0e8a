"""`python -m services.stack up` (what `make up` runs): it serves, and Ctrl-C or SIGTERM leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.stack import exporters
from services.stack.procfile import settings_env
from tests.conftest import ROOT, RUN_DIR
from tests.support.native_stack import child_env, e2e_settings
from tests.support.procs import stat_fields, stop, wait_until

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    with contextlib.suppress(FileNotFoundError):
        return stat_fields(Path(f"/proc/{pid}"))[0] != "Z"
    return False


def left_behind(run_dir: Path, groups: list[int]) -> list[int]:
    """Live PIDs in one of the launcher's process groups, or naming our private run directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        with contextlib.suppress(FileNotFoundError):
            pgrp = int(stat_fields(entry)[2])
            if pgrp in groups or str(run_dir).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_up_serves_and_stops_everything(signum: signal.Signals) -> None:
    run_dir = RUN_DIR / f"launcher-{signum.name}-{time.strftime('%H%M%S')}-{os.getpid()}"
    settings = e2e_settings(run_dir)
    env = {**child_env(), **settings_env(settings)}
    log = run_dir / "launcher.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "services.stack", "up", "--no-worker"], cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{settings.port}"
        wait_until(lambda: httpx.get(f"{url}/health").status_code in (200, 503), 60, "stack behind nginx", launcher)
        prometheus = f"http://127.0.0.1:{settings.prometheus_port}/-/ready"
        wait_until(lambda: httpx.get(prometheus).status_code == 200, 30, "prometheus", launcher)
        # redis, api-1, api-2, nginx, prometheus, and Redis's and nginx's exporters where installed
        names = ["redis", "api-1", "api-2", "nginx", "prometheus"]
        names += [e.name for e in exporters.native(settings, env, settings.redis_url)]
        pids_file = run_dir / "stack.pids"
        wait_until(lambda: sorted(json.loads(pids_file.read_text())) == sorted(names), 30, "every pid", launcher)
        pids = list(json.loads(pids_file.read_text()).values())
        for name in names:
            assert (settings.log_dir / f"{name}.log").stat().st_size > 0, name
        os.kill(launcher.pid, signum)  # as Ctrl-C (to the launcher alone) or a service manager would
        launcher.wait(60)
    finally:
        stop(launcher)
    # each process leads a group of its own, so the groups hold gunicorn's and nginx's workers too
    assert left_behind(run_dir, pids) == []
