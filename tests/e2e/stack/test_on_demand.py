"""Models loaded when asked for (issue 27, item 4): the native stack as `make up` runs it (LOAD_ON_DEMAND), one
worker that starts a llama-server per model, with a memory budget that holds Gemma 3 270M or SmolLM2 135M but
not both. Requests for the two alternate, one after the other and at once: every one is answered by the model it
named (never by the other's weights), the worker swaps models in between, and /v1/system/status shows one model
loaded at a time within the budget; a model idle past its keep_alive is unloaded, and a request's own
`keep_alive` wins. Then a new user's three commands: `python -m services.models add` from a (stand-in) Hugging
Face hub into the running stack's catalog, and a chat with the new model through nginx, no restart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.catalog import Catalog
from services.worker import budget
from tests.conftest import ROOT, RUN_DIR
from tests.support.hf_hub import FakeHub, HubRepo
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
GEMMA, SMOL = "gemma-3-270m", "smollm2-135m-instruct"
SLOTS, CONTEXT = 2, 1024
WEIGHTS = ("gemma-3-270m-q4_k_m.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf")


def place_models(target: Path) -> Path:
    """A models folder of its own (the CLI writes its catalog), linking the shipped weights."""
    target.mkdir(parents=True)
    shutil.copy(ROOT / "models" / "models.yaml", target / "models.yaml")
    for name in (*WEIGHTS, "templates"):
        (target / name).symlink_to(ROOT / "models" / name)
    return target


def costs(models_dir: Path) -> dict[str, budget.Cost]:
    catalog = Catalog.from_yaml(models_dir / "models.yaml")
    out = {}
    for model in (GEMMA, SMOL):
        path = catalog.path_for(model, "llama_server", models_dir)
        assert path is not None
        out[model] = budget.cost(path, slots=SLOTS, wanted=CONTEXT, cap=CONTEXT, budget=2**40)
    return out


@pytest.fixture(scope="module")
def stack(gemma_path: object) -> Iterator[NativeStack]:
    run = RUN_DIR / f"on-demand-{time.strftime('%H%M%S')}-{os.getpid() % 10_000}"
    models_dir = place_models(run / "models")
    each = costs(models_dir)
    one_only = max(c.total for c in each.values()) + min(c.total for c in each.values()) // 2
    settings = e2e_settings(
        run,
        load_on_demand=True,
        workers=1,
        llama_server_parallel=SLOTS,
        n_ctx=CONTEXT,
        memory_budget=str(one_only),
        keep_alive="-1",
        default_max_tokens=8,
        models_dir=models_dir,
        models_file=models_dir / "models.yaml",
        model_load_wait_s=120,
    )
    with native_stack(settings) as running:
        wait_until(running.model_served, 120, "the default model", running.procs["worker"])
        time.sleep(1.5)  # each API process sees the fleet as it was up to a second ago (Gateway.serving)
        yield running


def status(stack: NativeStack) -> dict:
    (worker,) = httpx.get(f"{stack.url}/v1/system/status", timeout=5).json()["workers"]
    return worker


def chat(stack: NativeStack, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4, **extra}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=180)


def test_the_worker_reports_its_budget_and_what_its_model_takes(stack: NativeStack) -> None:
    worker = status(stack)
    assert worker["on_demand"] and worker["memory_budget"] == int(stack.settings.memory_budget)
    assert set(worker["loaded"]) == {GEMMA}
    assert worker["loaded"][GEMMA]["context"] == CONTEXT and worker["loaded"][GEMMA]["keep_alive"] == -1
    assert worker["memory_used"] == worker["loaded"][GEMMA]["bytes"] <= worker["memory_budget"]
    assert SMOL in worker["can_serve"], "a model with llama_server weights here is one the worker can load"


def test_alternating_requests_each_get_the_model_they_named(stack: NativeStack) -> None:
    """One after the other: every answer comes from the model asked for; one model is loaded at a time."""
    seen = []
    for model in (SMOL, GEMMA, SMOL, GEMMA):
        started = time.monotonic()
        response = chat(stack, model)
        took = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        worker = status(stack)
        seen.append((model, round(took, 2), sorted(worker["loaded"])))
        assert list(worker["loaded"]) == [model], "the budget holds one model: the other was unloaded"
        assert worker["memory_used"] <= worker["memory_budget"]
    print("model, seconds to the answer (a swap each), loaded after:", seen)


def test_requests_for_both_at_once_are_all_answered(stack: NativeStack) -> None:
    """Three requests for each model in flight together: the worker swaps models between them; none is lost
    and none is answered by the other model's weights."""
    results: list[tuple[str, int, str]] = []

    def ask(model: str) -> None:
        response = chat(stack, model)
        results.append((model, response.status_code, response.json().get("model", response.text)))

    threads = [threading.Thread(target=ask, args=(m,)) for m in (GEMMA, SMOL) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert len(results) == 6
    assert all(code == 200 and answered == model for model, code, answered in results), results


def test_a_model_idle_past_its_keep_alive_is_unloaded(stack: NativeStack) -> None:
    """A request's keep_alive wins over KEEP_ALIVE (-1 here): 2 s after its answer the model is gone from the
    worker's `loaded` and from /v1/models' served list, and the next request loads it again."""
    response = chat(stack, SMOL, keep_alive="2s")
    assert response.status_code == 200, response.text
    # the worker heartbeats every 0.5 s: its record shows the request's keep_alive once the job has ended
    wait_until(
        lambda: status(stack)["loaded"].get(SMOL, {}).get("keep_alive") == 2 or SMOL not in status(stack)["loaded"],
        5,
        "the request's keep_alive",
    )
    wait_until(lambda: SMOL not in status(stack)["loaded"], 15, "the idle unload", stack.procs["worker"])
    assert status(stack)["memory_used"] == 0
    again = chat(stack, SMOL)
    assert again.status_code == 200 and again.json()["model"] == SMOL


def test_a_bad_keep_alive_is_a_400_naming_it(stack: NativeStack) -> None:
    response = chat(stack, GEMMA, keep_alive="soon")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "keep_alive"


def test_a_model_no_worker_can_load_is_a_503_at_once(stack: NativeStack) -> None:
    """Qwen2.5 0.5B is in the catalog but its weights are not here: no worker lists it in can_serve, so its
    request is not left waiting MODEL_LOAD_WAIT_S."""
    response = chat(stack, "qwen2.5-0.5b-instruct")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_loaded"


def test_a_model_larger_than_the_budget_fails_its_request_with_the_reason(stack: NativeStack) -> None:
    """A catalog entry whose file is larger than the whole budget: the worker refuses the load (nothing is
    unloaded for it), and the waiting request ends with the worker's reason instead of at MODEL_LOAD_WAIT_S."""
    huge = stack.settings.models_dir / "huge.gguf"
    with huge.open("wb") as f:  # sparse: its size, not its bytes, is what the budget reads
        f.truncate(int(stack.settings.memory_budget) + 2**20)
    with stack.settings.models_file.open("a") as f:
        f.write("  huge:\n    sources:\n      llama_server: {path: huge.gguf}\n")
    wait_until(lambda: "huge" in status(stack)["can_serve"], 15, "the worker to see the new catalog entry")
    time.sleep(1.5)  # each API replica re-reads the catalog at most once a second (the worker may see it first)
    loaded = set(status(stack)["loaded"])
    started = time.monotonic()
    response = chat(stack, "huge")
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "model_load_failed" and "memory budget" in error["message"], error
    assert time.monotonic() - started < 30, "ended by the worker's reason, not MODEL_LOAD_WAIT_S (120 s)"
    assert set(status(stack)["loaded"]) == loaded, "nothing was unloaded for a model that cannot fit"


def test_a_new_user_adds_a_model_from_the_hub_and_chats_with_it(stack: NativeStack, tmp_path: Path) -> None:
    """The README's three commands, against the running stack: add, then chat through nginx; no restart."""
    smol = ROOT / "models" / WEIGHTS[1]
    with FakeHub({"acme/tiny-chat-GGUF": HubRepo(files={"tiny-chat-Q4_1.gguf": smol})}) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env |= {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf-home"),
            "MODELS_DIR": str(stack.settings.models_dir),
            "MODELS_FILE": str(stack.settings.models_file),
        }
        added = subprocess.run(
            [sys.executable, "-m", "services.models", "add", "acme/tiny-chat-GGUF:Q4_1", "--id", "tiny-chat"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert added.returncode == 0, added.stdout + added.stderr
    wait_until(lambda: "tiny-chat" in status(stack)["can_serve"], 15, "the worker to see the new catalog entry")
    time.sleep(1.5)  # each API process reads the fleet at most a second old
    listed = httpx.get(f"{stack.url}/v1/models", timeout=5).json()["data"]
    assert "tiny-chat" in {m["id"] for m in listed}, "offered in /v1/models (a model picker) before its first load"
    assert httpx.get(f"{stack.url}/v1/models/tiny-chat", timeout=5).json()["id"] == "tiny-chat"
    started = time.monotonic()
    response = chat(stack, "tiny-chat")
    print(f"first answer of a model added a moment ago: {time.monotonic() - started:.1f} s (its load included)")
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "tiny-chat"
    assert response.json()["choices"][0]["message"]["content"] is not None
