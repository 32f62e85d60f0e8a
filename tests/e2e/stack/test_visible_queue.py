"""The visible queue through nginx, two API replicas and a real llama-server worker with one slot, with API
keys on: the wait header on every answer, the queue comments of a waiting stream (read raw, and ignored by
the official `openai` client), and the queue per key in /v1/system/status while it is full."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from services.common.ports import free_port
from services.keys import store
from services.stack import prometheus_conf
from services.stack.binaries import require
from tests.conftest import RUN_DIR
from tests.support.browser import browser_page
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import running as running_proc
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
COUNTING = {"prompt": "1, 2, 3, 4, 5,", "temperature": 0}
"""Greedy counting: Gemma 270M keeps counting without end-of-sequence, so a long request really is long."""


@pytest.fixture(scope="module")
def stack(gemma_path: object) -> Iterator[tuple[NativeStack, dict[str, str]]]:
    run_dir = RUN_DIR / f"queue-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = e2e_settings(run_dir, api_keys_file=run_dir / "api-keys.json", llama_server_parallel=1)
    made = {name: store.create(settings.api_keys_file, name) for name in ("team-a", "team-b")}
    made["ops"] = store.create(settings.api_keys_file, "ops", admin=True)
    with native_stack(settings) as running:
        yield running, made


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_answer_after_admission_says_its_queue_wait(stack) -> None:
    running, made = stack
    body = {"model": "gemma-3-270m", **COUNTING, "max_tokens": 4}
    ok = httpx.post(f"{running.url}/v1/completions", json=body, headers=auth(made["team-a"]), timeout=120)
    assert ok.status_code == 200 and 0 <= int(ok.headers["x-queue-wait-ms"]) < 60_000
    too_long = {"model": "gemma-3-270m", "prompt": "word " * 3000, "max_tokens": 4}
    failed = httpx.post(f"{running.url}/v1/completions", json=too_long, headers=auth(made["team-a"]), timeout=120)
    assert failed.status_code == 400 and "x-queue-wait-ms" in failed.headers, failed.text
    refused = httpx.post(f"{running.url}/v1/completions", json=body, timeout=30)  # no key: never admitted
    assert refused.status_code == 401 and "x-queue-wait-ms" not in refused.headers


def test_a_waiting_stream_hears_where_it_stands_and_the_sdk_ignores_it(stack) -> None:
    running, made = stack
    blocker = {"model": "gemma-3-270m", **COUNTING, "max_tokens": 300, "stream": True}
    sdk = openai.OpenAI(base_url=f"{running.url}/v1", api_key=made["team-b"], max_retries=0, timeout=300)

    def block() -> httpx.Response:
        return httpx.post(f"{running.url}/v1/completions", json=blocker, headers=auth(made["team-a"]), timeout=300)

    def raw_stream() -> tuple[str, dict]:
        body = {"model": "gemma-3-270m", **COUNTING, "max_tokens": 8, "stream": True}
        with httpx.stream(
            "POST", f"{running.url}/v1/completions", json=body, headers=auth(made["team-b"]), timeout=300
        ) as reply:
            return reply.read().decode(), dict(reply.headers)

    with ThreadPoolExecutor(5) as pool:
        blockers = [pool.submit(block) for _ in range(3)]  # one slot: the others wait
        time.sleep(1.0)
        raw = pool.submit(raw_stream)
        time.sleep(0.5)
        status = httpx.get(f"{running.url}/v1/system/status", headers=auth(made["ops"]), timeout=30).json()
        started = time.monotonic()
        chunks = list(sdk.completions.create(model="gemma-3-270m", prompt="Hello", max_tokens=4, stream=True))
        sdk_wait = time.monotonic() - started
        text, headers = raw.result()
        assert all(b.result().status_code == 200 for b in blockers)

    queue = status["models"]["gemma-3-270m"]
    assert queue["queued"] >= 2 and queue["queued_by_key"].get("team-b") == 1, status
    assert queue["queued_by_key"].get("team-a", 0) >= 1 and queue["oldest_wait_s"] > 0
    comments = re.findall(r"^: queued position=(\d+|\?) eta_s=(\S+) waited_ms=(\d+)$", text, flags=re.M)
    assert len(comments) >= 2, text[:2000]
    positions = [int(p) for p, _, _ in comments if p != "?"]
    assert positions and positions[0] >= 1 and positions == sorted(positions, reverse=True), comments
    assert any(eta != "?" and float(eta) > 0 for _, eta, _ in comments), "an estimate once a job was served"
    final = re.search(r"^: started queue_wait_ms=(\d+)$", text, flags=re.M)
    assert final and int(final.group(1)) >= int(comments[-1][2]) > 0
    assert 0 < int(headers["x-queue-wait-ms"]) <= int(final.group(1))
    assert text.rstrip().endswith("data: [DONE]")
    # the official client saw only chunks: the comments dispatched nothing
    assert sdk_wait > 1.0 and chunks and chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "text_completion" for c in chunks)


def test_the_status_page_asks_for_an_admin_key_and_shows_the_queue_per_key(stack, tmp_path) -> None:
    """Through nginx with keys on, the page's poll is refused until an admin key is given in the page."""
    running, made = stack
    with browser_page(tmp_path / "profile") as page:
        page.goto(f"{running.url}/status")
        form = page.locator("#keyform")
        form.wait_for(state="visible", timeout=20_000)
        assert "admin key" in page.locator("#keywhy").inner_text()
        page.fill("#key", made["team-a"])  # a key, but not an admin's
        page.click("#keyform button")
        page.locator("#keywhy", has_text="not an admin").wait_for(timeout=20_000)
        page.fill("#key", made["ops"])
        page.click("#keyform button")
        page.locator('tr[data-model="gemma-3-270m"]').wait_for(timeout=20_000)
        assert not form.is_visible()
        header = page.locator("table").first.inner_text()
        assert "Queued by key" in header
        assert made["ops"] not in page.content(), "the key stays out of the page"


def test_prometheus_scrapes_with_keys_on(stack, tmp_path) -> None:
    """The stack's own Prometheus scrapes each replica from loopback without a key; a Prometheus scraping
    through nginx (as compose's does over its network) needs the scrape token, sent as compose's generated
    config sends it (`authorization: credentials_file`), and an admin's: a user's key or none is refused."""
    running, made = stack
    targets = httpx.get(f"{running.stack.prometheus_url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    api = [t for t in targets if t["labels"]["job"] == "api"]
    assert len(api) == 2 and all(t["health"] == "up" for t in api), api
    (compose_api,) = [job for job in prometheus_conf.compose()["scrape_configs"] if job["job_name"] == "api"]
    jobs = []
    for name, key in (("admin", made["ops"]), ("user", made["team-a"]), ("none", None)):
        job = {"job_name": name, "static_configs": [{"targets": [running.url.removeprefix("http://")]}]}
        if key is not None:
            (tmp_path / f"{name}.token").write_text(key + "\n")
            path = str(tmp_path / f"{name}.token")
            job["authorization"] = compose_api["authorization"] | {"credentials_file": path}
        jobs.append(job)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    port = free_port()
    argv = [require("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}"]
    argv.append(f"--web.listen-address=127.0.0.1:{port}")
    with running_proc(argv, log=tmp_path / "prometheus.log") as proc:

        def scraped() -> dict[str, str] | None:
            found = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in found}
            return health if len(health) == 3 and "unknown" not in health.values() else None

        wait_until(lambda: scraped() is not None, 60, "three scrapes", proc)
        assert scraped() == {"admin": "up", "user": "down", "none": "down"}
