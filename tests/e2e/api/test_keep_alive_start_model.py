"""A request's keep_alive never takes a model away from a worker that would not load it again.

The finding (tests/e2e/attack/test_fuzz.py, after fc0710d): one fuzzed request with `keep_alive: 0` made the
stack's only worker (no --on-demand) unload its start model at the next idle tick, and every request after it
was a 503 `model_not_loaded` until a restart. Only a worker that loads models on request can let a model go
when it idles: it loads it again when the next request waits.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.api.conftest import MODEL, serving, start_api, start_redis, start_worker
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
WATCH_S = 12.0
"""The worker looks for idle models every second, and an unload takes up to DEQUEUE_TIMEOUT + 2 s (7 s) before the
model leaves its record (services/worker/slots.py): a model let go is gone from /health well within this."""


@pytest.mark.parametrize("keep_alive", [0, "1s"])
def test_a_request_s_keep_alive_leaves_a_start_model_loaded(private, keep_alive: object) -> None:
    port, data, env = private
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with start_redis(port, data), start_worker(env, data / "worker.log", "pinned"):
        api_ctx, url = start_api(env, data / "api.log")
        with api_ctx as api_proc:
            wait_until(lambda: serving(url), 120, "worker registered", api_proc)
            r = httpx.post(f"{url}/v1/chat/completions", json=chat | {"keep_alive": keep_alive}, timeout=60)
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + WATCH_S
            while time.monotonic() < deadline:
                assert serving(url), f"keep_alive={keep_alive!r} unloaded the model of a worker that cannot reload it"
                time.sleep(0.2)
            again = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
            assert again.status_code == 200, again.text
