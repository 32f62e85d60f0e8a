"""Item 1's guard, with gunicorn for real: without API keys a replica that would listen beyond loopback
exits before it binds, saying why, unless ALLOW_OPEN=true; on loopback it starts as always."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from services.api.limits.exposure import open_problem
from services.common.ports import free_port
from services.common.settings import Settings
from tests.conftest import ROOT, RUN_DIR
from tests.support.procs import running, wait_until

pytestmark = pytest.mark.integration
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "services/api/gunicorn_conf.py", "services.api.wsgi:create()"]


def env(redis_url: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC") and k != "API_KEYS_FILE"}
    return clean | {"REDIS_URL": redis_url, "WORKERS": "1", "API_THREADS": "4", **extra}


def test_open_and_public_refuses_to_start(redis_url: str) -> None:
    port = free_port()
    result = subprocess.run(
        [*GUNICORN, "--bind", f"0.0.0.0:{port}"], env=env(redis_url), cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "refusing to start: no API keys" in result.stderr and "ALLOW_OPEN=true" in result.stderr
    assert f"0.0.0.0:{port}" in result.stderr


@pytest.mark.parametrize(
    ("bind", "extra"),
    [("0.0.0.0", {"ALLOW_OPEN": "true"}), ("127.0.0.1", {})],
    ids=["open-on-purpose", "loopback"],
)
def test_it_starts_when_open_on_purpose_or_on_loopback(redis_url: str, bind: str, extra: dict[str, str]) -> None:
    port = free_port()
    log = RUN_DIR / f"open-guard-{port}.log"
    with running([*GUNICORN, "--bind", f"{bind}:{port}"], log=log, env=env(redis_url, **extra), cwd=ROOT) as proc:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200, 60, "api", proc)


def test_open_problem_reads_every_bind(tmp_path) -> None:
    closed = Settings()
    assert open_problem(closed, [("127.0.0.1", 1), ("::1", 2), ("localhost", 3), "/run/api.sock", 5]) is None
    assert "api:8000" in (open_problem(closed, [("127.0.0.1", 1), ("api", 8000)]) or "")
    assert "0.0.0.0:8000" in (open_problem(closed, [("", 8000)]) or "")
    assert open_problem(Settings(allow_open=True), [("0.0.0.0", 8000)]) is None
    assert open_problem(Settings(api_keys_file=tmp_path / "keys.json"), [("0.0.0.0", 8000)]) is None
