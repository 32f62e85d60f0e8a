"""`python -m bench` end to end in a tiny configuration, so the tool cannot rot unnoticed.

Direct and stack modes on the real Gemma model (one level, two requests, four tokens), then the
gateway mode with the instant engine beside LiteLLM's proxy, then the five goal figures of issue 10;
the JSON must have the fields and sane values. Speeds are never asserted: the printed bench judges them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
LEVEL_FIELDS = {
    "concurrency",
    "requests",
    "ok",
    "success_rate",
    "requests_per_s",
    "latency_p50_s",
    "latency_p95_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "completion_tokens",
    "tokens_per_s",
    "errors",
}


def bench(out: Path, *args: str, timeout: float = 180) -> dict:
    """Run the CLI as `make bench` does and return the one JSON file it wrote."""
    cmd = [sys.executable, "-m", "bench", "--out", str(out), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the bench stops its private stack (subprocess.run's SIGKILL orphaned it)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"bench ran past {timeout} s: {stdout[-3000:]}{stderr[-3000:]}")
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.glob("bench-*.json")
    return json.loads(path.read_text()) | {"_stdout": done.stdout}


def check_level(level: dict, *, requests: int, max_tokens: int) -> None:
    assert set(level) >= LEVEL_FIELDS, LEVEL_FIELDS - set(level)
    assert level["requests"] == requests and level["ok"] == requests
    assert level["success_rate"] == 1.0 and level["errors"] == {}
    assert 1 <= level["completion_tokens"] <= requests * max_tokens
    assert level["tokens_per_s"] > 0 and level["requests_per_s"] > 0
    assert 0 < level["ttft_p50_s"] <= level["latency_p50_s"] <= level["latency_p95_s"]


def test_direct_and_stack(tmp_path, gemma_path):
    result = bench(tmp_path, "--mode", "direct,stack", "--concurrency", "1", "--requests", "2", "--max-tokens", "4")
    assert set(result["modes"]) == {"direct", "stack"}
    for mode in ("direct", "stack"):
        (level,) = result["modes"][mode]["levels"]
        check_level(level, requests=2, max_tokens=4)
    # same prompts, greedy: the in-process call and the stack generate the same number of tokens
    assert (
        result["modes"]["direct"]["levels"][0]["completion_tokens"]
        == result["modes"]["stack"]["levels"][0]["completion_tokens"]
    )
    figures = result["figures"]["stack_vs_direct"]
    assert {"added_ttft_p50_ms_c1", "tokens_per_s_ratio_c1", "tokens_per_s_ratio_best"} <= set(figures)
    assert 0 < figures["tokens_per_s_ratio_c1"] < 5
    assert result["meta"]["machine"]["logical_cpus"] >= 1
    assert "| conc |" in result["_stdout"] and "time to first token added" in result["_stdout"]
    assert list(tmp_path.glob("bench-*.png")), "the plot was written"


GOALS = {
    "added_ttft_p50_ms",
    "added_ttft_p95_ms",
    "tokens_per_s_ratio_c1",
    "tokens_per_s_ratio_c8",
    "gateway_cpu_ms_per_request",
    "requests_per_s_vs_litellm_c32",
    "stream_tokens_per_s_per_api_core",
}


def test_gateway_with_the_instant_engine_beside_litellm(tmp_path):
    """LiteLLM's proxy (its own venv under run/, installed on first use) measured level by level beside ours."""
    args = ["--gateway", "--gateway-concurrency", "1,4", "--gateway-requests", "20", "--no-plot"]
    result = bench(
        tmp_path, *args, "--long-tokens", "32", "--long-requests", "4", "--long-concurrency", "2", timeout=900
    )
    assert set(result["modes"]) == {
        "gateway-json",
        "gateway-stream",
        "litellm-json",
        "litellm-stream",
        "gateway-long",
    }, result["notes"]
    for variant in ("json", "stream"):
        levels = result["modes"][f"gateway-{variant}"]["levels"]
        assert [lv["concurrency"] for lv in levels] == [1, 4]
        for level in levels:
            assert level["success_rate"] == 1.0 and level["completion_tokens"] == 20 * 16
            assert {"api", "nginx", "redis", "worker", "bench"} <= set(level["cpu_ms_per_request"])
            assert level["cpu_ms_per_request"]["api"] > 0
        figures = result["figures"]["gateway"][variant]
        assert figures["peak_requests_per_s"] > 1 and figures["api_cpu_ms_per_request"] > 0
        theirs = result["modes"][f"litellm-{variant}"]["levels"]
        assert [lv["concurrency"] for lv in theirs] == [1, 4]
        assert all(lv["success_rate"] == 1.0 and "litellm" in lv["cpu_ms_per_request"] for lv in theirs)
        assert result["figures"]["gateway"][f"litellm-{variant}"]["peak_requests_per_s"] > 1
    (long,) = result["modes"]["gateway-long"]["levels"]
    assert long["success_rate"] == 1.0 and long["completion_tokens"] == 4 * 32
    assert "LiteLLM proxy, same run (json)" in result["_stdout"]


def test_goals_in_one_run(tmp_path, gemma_path):
    """`--goals` prints the five figures with their goals and saves them: llama-server direct vs the stack
    at c=1 and c=8, and the gateway vs LiteLLM at c=32. Present and numeric; their values are the bench's job."""
    args = ["--goals", "--requests", "2", "--max-tokens", "4", "--engine-slots", "2", "--no-plot"]
    args += ["--gateway-concurrency", "32", "--gateway-requests", "40"]
    # long enough that the API's CPU is read over ticks of psutil's clock, or the per-core figure has no divisor
    args += ["--long-tokens", "512", "--long-requests", "16", "--long-concurrency", "4"]
    result = bench(tmp_path, *args, timeout=900)
    goals = result["figures"]["goals"]
    assert set(goals) == GOALS, result["notes"]
    for key, figure in goals.items():
        assert isinstance(figure["value"], float), (key, figure, result["notes"])
        assert figure["met"] in (True, False) if figure["goal"] is not None else figure["met"] is None
    out = result["_stdout"]
    assert "goals (issue 10), measured side by side in this run:" in out
    for label in (
        "time to first token added, P50, c=1",
        "time to first token added, P95, c=1",
        "tokens/s, stack / llama-server, c=1",
        "tokens/s, stack / llama-server, c=8",
        "gateway CPU per 4-token request",
        "gateway-only requests/s / LiteLLM's, c=32",
        "streaming capacity: tokens/s per API core",
    ):
        line = next((ln for ln in out.splitlines() if ln.startswith(f"| {label}")), None)
        assert line is not None and "| - |" not in line, (label, out[-3000:])


def test_engines_side_by_side(tmp_path, gemma_path):
    """Every engine through a private stack beside its own server called directly (llama-server,
    mlx_lm.server) or in-process llama.cpp: the table issue #5 asks for, in a tiny size."""
    assert (ROOT / "models" / "mlx" / "gemma-3-270m" / "config.json").exists(), "run `make models-mlx`"
    args = ["--engines", "--mlx-cpu", "--engines-concurrency", "1,2", "--requests", "2", "--max-tokens", "4"]
    result = bench(tmp_path, *args, "--engine-slots", "2", "--no-plot", timeout=400)
    engines = ("llama_cpp", "llama_server", "mlx")
    assert set(result["modes"]) == {f"engine-{e}-{path}" for e in engines for path in ("stack", "direct")}
    for engine in engines:
        tokens = {}
        for path in ("stack", "direct"):
            levels = result["modes"][f"engine-{engine}-{path}"]["levels"]
            assert [lv["concurrency"] for lv in levels] == [1, 2]
            for level in levels:
                check_level(level, requests=2, max_tokens=4)
            tokens[path] = [lv["completion_tokens"] for lv in levels]
        # the same greedy prompts in the same format: both sides generate the same number of tokens
        assert tokens["stack"] == tokens["direct"], (engine, tokens)
        # streamed over HTTP, a request's writes with text are counted: at least one, at most one a token
        for path in ("stack", "direct"):
            for level in result["modes"][f"engine-{engine}-{path}"]["levels"]:
                writes = level["writes_per_request"]
                if engine == "llama_server" or path == "stack":
                    assert writes is not None, (engine, path, level)
                if writes is not None:
                    assert 1 <= writes <= level["completion_tokens"] / level["ok"], (engine, path, level)
        figures = result["figures"]["engines"][engine]
        assert set(figures["stack_over_direct"]) == {"1", "2"}  # JSON keys
        assert figures["stack_scaling_c2_over_c1"] > 0 and figures["direct_scaling_c2_over_c1"] > 0
    assert "engines (aggregate generated tokens/s)" in result["_stdout"]
