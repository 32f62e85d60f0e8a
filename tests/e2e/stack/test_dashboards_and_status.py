"""Operators' views on real data: every Grafana panel's query against the stack's real Prometheus, and the
/status page in a real headless Chromium, both while the native stack (redis, two API replicas, nginx,
llama-server with its worker on Gemma 3 270M, Prometheus scraping every second) serves a bounded load.

The panel values are printed and written to run/dashboard-panels.txt; the page's screenshot to run/status-page.png
(the README shows a copy kept in monitoring/status-page.png).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import ROOT, RUN_DIR
from tests.support.browser import browser_page, chromium
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.panel_check import PanelResult, Prometheus, evaluate
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
MESSAGES = [{"role": "user", "content": "Name three colours."}]
COUNTING = {"prompt": "1, 2, 3, 4, 5,", "temperature": 0, "max_tokens": 96}
"""Greedy counting: Gemma 270M keeps counting without end-of-sequence, so these requests really are long."""
PANELS_FILE = RUN_DIR.parent / "dashboard-panels.txt"
SCREENSHOT = ROOT / "run" / "status-page.png"
EXCLUDED: dict[tuple[str, str], str] = {}
"""(dashboard, panel title) -> why its query cannot have data in this run. None today: every panel is
fed by a plain load (a draining worker's gauge reads 0, which is data)."""


@pytest.fixture(scope="module")
def stack(gemma_path: object) -> Iterator[NativeStack]:
    settings = e2e_settings(RUN_DIR / f"observe-{time.strftime('%H%M%S')}-{id(object()) % 10_000}")
    with native_stack(settings, scrape_interval="1s") as running:
        yield running


def client(stack: NativeStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="not-needed", max_retries=0, timeout=300)


def one_request(api: openai.OpenAI, i: int, max_tokens: int = 8) -> str:
    """Chat and legacy completions, streamed and not, so every route and code path reports."""
    if i % 4 == 0:
        stream = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens, stream=True)
        return [c for c in stream if c.choices][-1].choices[0].finish_reason or ""
    if i % 4 == 1:
        reply = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens)
        return reply.choices[0].finish_reason
    if i % 4 == 2:
        stream = api.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=max_tokens, stream=True)
        return [c for c in stream if c.choices][-1].choices[0].finish_reason or ""
    return api.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=max_tokens).choices[0].finish_reason


def load(stack: NativeStack, n: int, concurrency: int, max_tokens: int = 8) -> list[str]:
    api = client(stack)
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: one_request(api, i, max_tokens), range(n)))


def report(results: list[PanelResult], window: str) -> str:
    lines = [
        "Every dashboard panel's query through Prometheus's /api/v1/query, at one moment of a bounded load "
        f"(36 short requests done, long ones generating and queued; $__rate_interval={window})"
    ]
    for r in results:
        lines.append(f"{r.dashboard:<24} {r.title:<34} {r.shown()}")
        lines.append(f"{'':<24} {'':<34} {r.expr}")
    return "\n".join(lines) + "\n"


def scraped(prom: Prometheus, finished: int) -> None:
    """Wait until both sides' counters of finished requests, as Prometheus has them, reach `finished`."""
    api = 'sum(inference_gateway_requests_total{route=~"/v1/.*completions"})'
    wait_until(lambda: prom.value(api) >= finished, 30, f"{finished} requests scraped from the API")
    worker = "sum(inference_request_success_total)"
    wait_until(lambda: prom.value(worker) >= finished, 30, f"{finished} requests scraped from the worker")


def leave_mid_stream(stack: NativeStack, prom: Prometheus) -> None:
    """Read a streamed completion's first chunk, then hang up; the API notices at its next write, the worker
    within a lease check, and both counters reach Prometheus."""
    body = {"model": MODEL, "stream": True, **COUNTING}
    with httpx.stream("POST", f"{stack.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    left = "sum(inference_gateway_client_disconnects_total)"
    wait_until(lambda: prom.value(left) >= 1, 30, "the client's disconnect scraped from the API")
    aborted = 'sum(inference_request_success_total{finished_reason="abort"})'
    wait_until(lambda: prom.value(aborted) >= 1, 30, "the aborted generation scraped from the worker")


def busy_moment(prom: Prometheus, timeout: float = 90) -> float:
    """A moment already scraped (a second back) when jobs waited in the queue and the worker generated, so
    the gauges read non-zero; every panel is then evaluated at that same moment."""
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        at = time.time() - 1
        depth = prom.value("sum(max by (model_name) (inference_num_requests_waiting))", at)
        running = prom.value("sum(inference_num_requests_running)", at)
        busy = prom.value("sum(max by (worker) (inference_worker_busy_slots))", at)
        if depth > 0 and running > 0 and busy > 0:
            return at
        seen = f"queue {depth}, running {running}, busy slots {busy}"
        time.sleep(0.5)
    raise TimeoutError(f"no scraped moment with a queue and busy slots in {timeout:.0f}s (last: {seen})")


def test_every_dashboard_panel_has_data(stack: NativeStack) -> None:
    prom = Prometheus(stack.stack.prometheus_url)
    started = time.monotonic()
    # Labelled series appear at their first observation, and a rate needs two samples: one request first,
    # scraped, so that Prometheus sees the load below as an increase however fast it runs.
    load(stack, n=1, concurrency=1)
    scraped(prom, 1)
    reasons = load(stack, n=36, concurrency=6)
    assert set(reasons) <= {"length", "stop"}, reasons
    scraped(prom, 37)
    leave_mid_stream(stack, prom)  # a client that hangs up: the disconnect counter and the workers' `abort`
    # then a queue two waves deep behind busy slots, so the gauges have something to show too
    api, n = client(stack), 3 * stack.settings.llama_server_parallel
    with ThreadPoolExecutor(n) as pool:
        running = [pool.submit(api.completions.create, model=MODEL, **COUNTING) for _ in range(n)]
        at = busy_moment(prom)
        # Grafana's $__rate_interval over a range covering the load; one instant query must see all of it
        window = f"{max(60, math.ceil(time.monotonic() - started) + 15)}s"
        results = list(evaluate(prom, window, at))
        for future in running:
            assert future.result().choices[0].finish_reason in ("length", "stop")
    text = report(results, window)
    print(text)
    PANELS_FILE.parent.mkdir(parents=True, exist_ok=True)
    PANELS_FILE.write_text(text)

    assert len(results) >= 50, "the dashboards lost panels"
    empty = [f"{r.dashboard}: {r.title}: {r.expr}" for r in results if not r.has_data and (r.dashboard, r.title)
             not in EXCLUDED]  # fmt: skip
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # a few values that must also be right, not merely present
    first = {(r.dashboard, r.title): r.series[0][1] for r in reversed(results)}  # the panel's first query
    assert first[("inference-overview.json", "Request rate")] > 0
    assert first[("inference-overview.json", "Success ratio")] == 1
    assert first[("inference-overview.json", "Live workers")] == 1
    assert first[("inference-overview.json", "Queue depth")] > 0
    top = {(r.dashboard, r.title): max(v for _, v in r.series) for r in reversed(results)}  # its series' largest
    assert top[("inference-overview.json", "Oldest waiting request")] > 0
    assert top[("inference-overview.json", "Requests in flight")] > 0
    # the registry gauges come from two replicas scraped at different instants, so the free-slot figure may
    # lag the busy moment by a heartbeat; busy_moment() already required busy slots, here only the range
    assert 0 <= first[("inference-overview.json", "Free slots")] <= stack.settings.llama_server_parallel
    assert first[("inference-worker.json", "Scrape up")] == 1
    # Redis's and nginx's exporters (Debian's packages in the native stack), through nginx's stub_status
    by_query = {r.expr: r.series for r in results}
    assert by_query["max(redis_up)"] == (("", 1.0),) and by_query["max(nginx_up)"] == (("", 1.0),)
    assert by_query["sum(nginx_connections_active)"][0][1] > 1  # the streams of the load hold connections
    assert top[("inference-overview.json", "Redis commands/s")] > 0
    # the client that hung up: a disconnect at the API, an abort at the worker (both counters start at 0)
    (left,) = [r.series for r in results if "client_disconnects_total" in r.expr]
    assert left[0][1] > 0, left
    reasons = dict(next(r.series for r in results if r.title == "Finished requests by reason"))
    assert reasons['{finished_reason="abort"}'] > 0 and reasons['{finished_reason="length"}'] > 0, reasons
    assert first[("inference-worker.json", "Running requests")] > 0


SNAPSHOT_JS = """() => ({
  busy: document.getElementById("busy").textContent,
  rate: document.getElementById("rate").textContent,
  ttft: document.getElementById("ttft").textContent,
  model: [...document.querySelectorAll("#models tr")].map((tr) => tr.innerText),
  workers: [...document.querySelectorAll("#worker-rows tr")].map((tr) => tr.innerText),
})"""


def first_number(text: str) -> float:
    found = re.search(r"\d+(?:\.\d+)?", text)
    return float(found.group()) if found else 0.0


def test_status_page_in_a_real_browser(stack: NativeStack, tmp_path) -> None:
    chromium()  # fail early, naming the package, when the browser is missing
    load(stack, n=8, concurrency=4)  # the last minute's rate and time to first token have something to show
    status = httpx.get(f"{stack.url}/v1/system/status", timeout=5).json()
    (worker,) = status["workers"]
    problems: list[str] = []
    seen: list[dict] = []

    def busy_and_queued(page) -> bool:
        """Busy slots, a queue behind them, the recent rate and time to first token, all on one render."""
        snap = page.evaluate(SNAPSHOT_JS)
        seen.append(snap)
        queued = [int(row.split("\t")[-1]) for row in snap["model"] if row.startswith(MODEL)]
        return (
            first_number(snap["busy"]) > 0 and queued[:1] > [0] and first_number(snap["rate"]) > 0
            and not snap["ttft"].startswith("-")
        )  # fmt: skip

    api = client(stack)
    n = 3 * stack.settings.llama_server_parallel  # a queue two waves deep behind the busy slots
    with ThreadPoolExecutor(n) as pool, browser_page(tmp_path / "profile") as page:
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        running = [pool.submit(api.completions.create, model=MODEL, **COUNTING) for _ in range(n)]
        page.goto(f"{stack.url}/status")  # through nginx, as an operator opens it
        page.locator(f'tr[data-worker="{worker["id"]}"]').wait_for(timeout=20_000)
        wait_until(lambda: busy_and_queued(page), 90, "busy slots and a queue on the status page")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        for future in running:
            assert future.result().choices[0].finish_reason in ("length", "stop")

    (cells,) = seen[-1]["workers"]
    assert worker["id"] in cells and MODEL in cells and "serving" in cells, cells
    assert "llama_server" in cells and f"pid {worker['engine_pid']}" in cells, cells
    assert not problems, problems
    assert SCREENSHOT.stat().st_size > 10_000
