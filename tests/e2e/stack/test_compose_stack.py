"""docker compose, for real: build the images, start the stack healthy, one chat through nginx, tear down.

Runs only where a Docker engine answers (the compose files are checked without one in
tests/unit/test_compose_files.py). Uses its own project name and free ports, and removes its volumes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import openai
import pytest

from services.common.ports import free_port
from tests.conftest import GEMMA, ROOT

pytestmark = pytest.mark.e2e


def docker_engine_answers() -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=10)
        return info.returncode == 0 and bool(info.stdout.strip())
    return False


@pytest.fixture(scope="module")
def compose_stack() -> Iterator[str]:
    if not docker_engine_answers():
        pytest.skip("no Docker engine answers here (`docker info` fails); the compose files are still validated")
    if not GEMMA.exists():
        pytest.fail(f"{GEMMA} is missing: run `make models`")
    port = free_port()
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": f"inference-test-{os.getpid()}",
        "REDIS_PASSWORD": "compose-" + os.urandom(8).hex(),
        "GRAFANA_ADMIN_PASSWORD": "grafana-" + os.urandom(8).hex(),
        "PORT": str(port),
        "PROMETHEUS_PORT": str(free_port()),
        "GRAFANA_PORT": str(free_port()),
        "API_KEYS_FILE": "",
        "ALLOW_OPEN": "true",  # no keys here: without this every API replica refuses to start
    }
    base = ["docker", "compose", "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]
    up = subprocess.run([*base, "up", "--build", "--detach", "--wait", "--wait-timeout", "900"], cwd=ROOT, env=env)
    try:
        assert up.returncode == 0, "docker compose up did not get every service healthy"
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([*base, "down", "--volumes", "--remove-orphans"], cwd=ROOT, env=env, check=False)


def test_chat_through_compose(compose_stack: str) -> None:
    api = openai.OpenAI(base_url=f"{compose_stack}/v1", api_key="not-needed", max_retries=2, timeout=120)
    reply = api.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None and reply.usage and reply.usage.completion_tokens > 0
