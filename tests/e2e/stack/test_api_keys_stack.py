"""API keys through nginx and two API replicas, as `make up` runs them, with the official `openai` client.

No worker is needed: authentication answers before a request reaches the queue.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from services.keys import store
from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[NativeStack]:
    run_dir = RUN_DIR / f"keys-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = e2e_settings(run_dir, api_keys_file=run_dir / "api-keys.json")
    store.create(settings.api_keys_file, "placeholder")
    with native_stack(settings, worker=False) as running:
        yield running


def client(stack: NativeStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30)


def cli(stack: NativeStack, *args: str) -> str:
    argv = [sys.executable, "-m", "services.keys", "--file", str(stack.settings.api_keys_file), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def test_a_wrong_key_is_an_authentication_error(stack: NativeStack) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(stack, "sk-wrong").models.list()
    assert caught.value.code == "invalid_api_key"
    reply = httpx.get(f"{stack.url}/v1/models")
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"


def test_a_key_made_by_the_cli_works_on_every_replica_within_a_second(stack: NativeStack) -> None:
    name = f"team-{time.monotonic_ns()}"
    key = cli(stack, "create", name)
    time.sleep(1.05)  # each API process re-reads the file at most once a second
    auth = {"Authorization": f"Bearer {key}"}
    for url in (stack.replica_url(1), stack.replica_url(2)) * 4:  # enough to reach each gunicorn process
        assert httpx.get(f"{url}/v1/models", headers=auth).status_code == 200
    for _ in range(4):
        assert client(stack, key).models.list().object == "list"
    assert name in cli(stack, "list") and key not in cli(stack, "list")
    cli(stack, "revoke", name)
    time.sleep(1.05)
    with pytest.raises(openai.AuthenticationError):
        client(stack, key).models.list()


def test_admin_routes_through_nginx_need_an_admin_key(stack: NativeStack) -> None:
    user = cli(stack, "create", f"user-{time.monotonic_ns()}")
    admin = cli(stack, "create", f"admin-{time.monotonic_ns()}", "--admin")
    time.sleep(1.5)
    # through nginx even a local caller is not "loopback": nginx forwards the client's address
    assert httpx.get(f"{stack.url}/v1/system/status").status_code == 401
    assert httpx.get(f"{stack.url}/metrics").status_code == 401
    with pytest.raises(openai.PermissionDeniedError):
        client(stack, user).post("/models/unload", body={"model": "gemma-3-270m"}, cast_to=object)
    auth = {"Authorization": f"Bearer {admin}"}
    assert httpx.get(f"{stack.url}/v1/system/status", headers=auth).status_code == 200
    assert httpx.get(f"{stack.url}/health").status_code in (200, 503)
    # Prometheus scrapes a replica directly from loopback, without a key
    assert httpx.get(f"{stack.replica_url(1)}/metrics").status_code == 200
