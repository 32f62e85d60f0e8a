"""Session fixtures: a real Redis (testcontainers where a Docker engine answers, else redis-server)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common.ports import free_port
from tests.support.procs import redis_command, running, wait_until, which

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / "run" / "tests"
GEMMA = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
PYTHON = sys.executable


def _docker_answers() -> bool:
    with contextlib.suppress(Exception):
        import docker

        docker.from_env(timeout=3).ping()
        return True
    return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis with a password, private to this test session: this machine's redis-server (`make
    test` installs it), else a container. A Docker engine that answers may reach no registry (the compose test
    starts one here), so a container is tried only where there is no redis-server."""
    password = "test-" + os.urandom(6).hex()
    if which("redis-server") is None and _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.4.1-alpine", password=password) as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://:{password}@{host}:{port}/0"
        return
    server = which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    port = free_port()
    data = RUN_DIR / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    cmd = redis_command(server, port, data, password=password)
    with running(cmd, log=data / "redis.log") as proc:
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        wait_until(lambda: redis.Redis.from_url(url).ping(), 20, "redis-server", proc)
        yield url


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture()
def quiet_redis_url(redis_url: str) -> Iterator[str]:
    """The session's Redis, database 1, emptied: no session-long worker of tests/e2e/api (it listens on database
    0 for the default model's queue) takes this test's jobs or shows in its registry."""
    url = redis_url.rsplit("/", 1)[0] + "/1"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture()
def quiet_redis_client(quiet_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(quiet_redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    if not GEMMA.exists():
        pytest.fail(f"{GEMMA} is missing: run `make models` (make test does)")
    return GEMMA
