"""`python -m services.stack up` (what `make up` runs) keeps every process running: kill -9 of an API replica's
gunicorn master, of nginx's master, of Prometheus and of the worker each leaves the stack serving through nginx,
and each comes back under a new PID within a bounded time; an unauthenticated `POST /-/quit` does not stop
Prometheus. At 755c2d0 the first kill stopped the whole stack (honcho stops everything when one process
exits) and the quit stopped Prometheus and with it the stack.

The processes are found from outside, in /proc by their command lines, as an operator or an attacker would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services.common.settings import Settings
from services.stack.procfile import settings_env
from tests.conftest import ROOT, RUN_DIR
from tests.e2e.stack.test_launcher import left_behind
from tests.support.native_stack import child_env, e2e_settings
from tests.support.procs import stat_fields, stop, wait_until

pytestmark = pytest.mark.e2e

BACK_WITHIN_S = {"api-1": 30, "nginx": 15, "prometheus": 30, "worker": 90}
"""How soon each serves again after its kill: the first restart follows 1 s after the death; a replica starts
gunicorn and its workers, a worker loads Gemma into a new llama-server."""


def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every live process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            if raw and stat_fields(entry)[0] != "Z":
                yield int(entry.name), raw.decode(errors="replace").rstrip("\0").split("\0")
        except (FileNotFoundError, ProcessLookupError):
            continue


def leads_its_group(pid: int) -> bool:
    """gunicorn's master leads its process group; its workers, with the same command line, do not."""
    try:
        return int(stat_fields(Path(f"/proc/{pid}"))[2]) == pid
    except FileNotFoundError:
        return False


@dataclass
class Launched:
    settings: Settings
    launcher: subprocess.Popen
    seen: set[int] = field(default_factory=set)
    """Every PID found: each leads a process group, which must be gone once the launcher stops."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.settings.prometheus_port}"

    def pid(self, name: str) -> int | None:
        """This stack's `name`: its ports and run directory tell it from other tests' stacks."""
        s = self.settings
        mine: dict[str, Callable[[int, list[str]], bool]] = {
            "api-1": lambda pid, argv: (
                "gunicorn" in " ".join(argv[:2]) and f"127.0.0.1:{s.api_base_port}" in argv and leads_its_group(pid)
            ),
            "nginx": lambda _pid, argv: argv[0].startswith("nginx: master") and str(s.run_dir) in argv[0],
            "prometheus": lambda _pid, argv: f"--config.file={s.run_dir}/prometheus/prometheus.yml" in argv,
            "worker": lambda _pid, argv: (
                argv[1:3] == ["-m", "services.worker"] and f"--metrics-port {s.worker_metrics_port}" in " ".join(argv)
            ),
        }
        found = [pid for pid, argv in processes() if mine[name](pid, argv)]
        assert len(found) <= 1, (name, found)
        self.seen.update(found)
        return found[0] if found else None

    def model_served(self) -> bool:
        health = httpx.get(f"{self.url}/health", timeout=5).json()
        return self.settings.default_model in health.get("models", [])

    def chat(self) -> int:
        body = {"model": self.settings.default_model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=60).status_code


@pytest.fixture(scope="module")
def launched() -> Iterator[Launched]:
    run_dir = RUN_DIR / f"supervision-{time.strftime('%H%M%S')}-{os.getpid()}"
    settings = e2e_settings(run_dir, llama_server_parallel=2)
    env = {**child_env(), **settings_env(settings)}
    log = run_dir / "launcher.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "services.stack", "up"], cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    stack = Launched(settings, launcher)
    try:
        wait_until(stack.model_served, 180, "the worker's model through nginx", launcher)
        wait_until(lambda: httpx.get(f"{stack.prometheus}/-/ready").status_code == 200, 30, "prometheus", launcher)
        for name in ("api-1", "nginx", "prometheus", "worker"):
            assert stack.pid(name), name
        yield stack
        assert launcher.poll() is None, "the launcher stopped by itself"
        os.kill(launcher.pid, signal.SIGTERM)  # asked to stop, it stops everything
        assert launcher.wait(90) == 0
    finally:
        stop(launcher)
    assert left_behind(run_dir, sorted(stack.seen)) == []


def comes_back(launched: Launched, name: str, old: int, ready: Callable[[], bool]) -> float:
    """Seconds until `name` runs under a new PID and `ready()` holds; fails at once if the launcher exits."""
    started = time.monotonic()
    wait_until(lambda: launched.pid(name) not in (None, old) and ready(), BACK_WITHIN_S[name], name, launched.launcher)
    return time.monotonic() - started


def answers(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


def kill(launched: Launched, name: str) -> int:
    pid = launched.pid(name)
    assert pid is not None, name
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_killed_replica_s_master_comes_back_and_nginx_serves_meanwhile(launched: Launched) -> None:
    old = kill(launched, "api-1")
    statuses = [httpx.get(f"{launched.url}/v1/models", timeout=5).status_code for _ in range(20)]
    assert statuses == [200] * 20, statuses  # the other replica answers; nginx passes over the dead one
    replica = f"http://127.0.0.1:{launched.settings.api_base_port}/health"
    took = comes_back(launched, "api-1", old, lambda: httpx.get(replica, timeout=2).status_code in (200, 503))
    assert launched.chat() == 200
    print(f"\napi-1 back in {took:.1f} s")


def test_a_killed_nginx_master_comes_back(launched: Launched) -> None:
    old = kill(launched, "nginx")  # its workers, which still hold the port, go before the restart
    took = comes_back(launched, "nginx", old, answers(f"{launched.url}/nginx/health"))
    assert launched.chat() == 200
    print(f"\nnginx back in {took:.1f} s")


def test_a_killed_prometheus_comes_back_and_its_lifecycle_api_is_off(launched: Launched) -> None:
    old = kill(launched, "prometheus")
    took = comes_back(launched, "prometheus", old, answers(f"{launched.prometheus}/-/ready"))
    pid = launched.pid("prometheus")
    for path in ("/-/quit", "/-/reload"):
        assert httpx.post(f"{launched.prometheus}{path}", timeout=5).status_code >= 400, path
    time.sleep(2)
    assert launched.pid("prometheus") == pid and answers(f"{launched.prometheus}/-/ready")()
    assert launched.chat() == 200
    print(f"\nprometheus back in {took:.1f} s")


def test_a_killed_worker_comes_back_and_serves(launched: Launched) -> None:
    old = kill(launched, "worker")
    took = comes_back(launched, "worker", old, launched.model_served)
    assert launched.chat() == 200
    print(f"\nworker back in {took:.1f} s")


def test_each_death_was_logged_and_the_launcher_runs_on(launched: Launched) -> None:
    assert launched.launcher.poll() is None
    log_dir = launched.settings.log_dir
    deaths = [line for line in (log_dir / "stack.log").read_text().splitlines() if "killed by SIGKILL" in line]
    for name in ("api-1", "nginx", "prometheus"):
        assert [line for line in deaths if f"{name} (pid" in line], name
    assert "worker (pid" in (log_dir / "worker.log").read_text()  # its respawn wrapper restarted it
