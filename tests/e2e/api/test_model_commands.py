"""/v1/models/unload and /v1/models/load reach a live worker over Redis, and it obeys."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.api.conftest import MODEL, serving, start_api, start_redis, start_worker
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e


def test_unload_then_load(private):
    port, data, env = private
    with start_redis(port, data), start_worker(env, data / "worker.log", "commanded"):
        api_ctx, url = start_api(env, data / "api.log")
        with api_ctx as api_proc:
            wait_until(lambda: serving(url), 60, "worker registered", api_proc)

            r = httpx.post(f"{url}/v1/models/unload", json={"model": "gpt-3.5-turbo"})
            assert r.status_code == 202 and r.json() == {
                "object": "model.unload",
                "model": MODEL,
                "status": "accepted",
                "workers": ["commanded"],
            }
            wait_until(lambda: not serving(url), 20, "model unloaded")
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30).status_code == 503
            status = httpx.get(f"{url}/v1/system/status").json()
            assert [w["id"] for w in status["workers"]] == ["commanded"] and status["workers"][0]["models"] == []

            r = httpx.post(f"{url}/v1/models/load", json={"model": MODEL})
            assert r.status_code == 202 and r.json()["workers"] == ["commanded"]
            wait_until(lambda: serving(url), 30, "model loaded again")
            done = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
            assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] >= 1


def test_command_errors(private):
    port, data, env = private
    with start_redis(port, data), start_worker(env, data / "worker.log", "lonely"):
        api_ctx, url = start_api(env, data / "api.log")
        with api_ctx as api_proc:
            wait_until(lambda: serving(url), 60, "worker registered", api_proc)
            unknown = httpx.post(f"{url}/v1/models/load", json={"model": "made-up"})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
            missing = httpx.post(f"{url}/v1/models/load", json={})
            assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
            nobody = httpx.post(f"{url}/v1/models/load", json={"model": MODEL, "worker": "ghost"})
            assert nobody.status_code == 400 and nobody.json()["error"]["param"] == "worker"
            already = httpx.post(f"{url}/v1/models/load", json={"model": MODEL})
            assert already.status_code == 503, "every live worker already serves it"
