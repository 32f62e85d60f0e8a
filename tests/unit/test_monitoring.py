"""Alert rules and dashboards as code: promtool accepts and unit-tests the rules, the Prometheus configs load
them, the committed dashboard JSON is current, and every query parses and reads only metrics the code exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitoring import dashboards
from services.api.observability.metrics import ApiMetrics
from services.api.observability.state_metrics import StateCollector, Waiting
from services.common.registry import WorkerRecord
from services.common.settings import ROOT, Settings
from services.stack import prometheus_conf
from services.stack.binaries import which
from services.stack.layout import Layout
from services.worker.metrics import WorkerMetrics

MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yml"
METRIC = re.compile(r"\b(?:api|inference)_[a-z0-9_]+\b")


def promtool(*args: str) -> None:
    """Run promtool and fail with its own words; missing promtool is a failure, never a skip."""
    binary = which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: `make test` installs it (Debian's prometheus package)")
    result = subprocess.run([binary, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}{result.stderr}"


def exported_names() -> set[str]:
    """Every sample name the API and the workers can export, with the suffixes Prometheus sees."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    record = WorkerRecord(
        id="w", host="h", pid=1, engine="e", device="cpu", models=("m",), slots=1, busy=0, started_at=0.0
    )
    families = [
        *ApiMetrics().registry.collect(),
        *WorkerMetrics("e").registry.collect(),
        *StateCollector(lambda: [record], lambda models: {m: Waiting(1, 2.0) for m in models}, ("m",), "m").collect(),
    ]
    return {f.name + suffix for f in families for suffix in suffixes[f.type]}


def test_one_prefix_and_the_engine_set_labelled_by_model_engine_worker() -> None:
    """Every series we export starts with `inference_`; the engine-side set is vLLM's names under it."""
    assert all(name.startswith("inference_") for name in exported_names()), exported_names()
    vllm_meanings = {
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "num_requests_running",
        "prompt_tokens",
        "generation_tokens",
        "request_success",
    }
    families = {f.name: f for f in WorkerMetrics("llama_server", worker="w1").registry.collect()}
    assert {"inference_" + n for n in vllm_meanings} <= set(families), set(families)
    metrics = WorkerMetrics("llama_server", worker="w1")
    metrics.first_token("m", 0.2)
    (sample,) = [s for f in metrics.registry.collect() for s in f.samples if s.name.endswith("_count")]
    assert {k: sample.labels[k] for k in ("model_name", "engine", "worker")} == {
        "model_name": "m",
        "engine": "llama_server",
        "worker": "w1",
    }


def dashboard_queries() -> list[tuple[str, str, str]]:
    return [
        (name, title, expr)
        for name, build in dashboards.DASHBOARDS.items()
        for title, expr in dashboards.panel_queries(json.loads(dashboards.render(build)))
    ]


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool_check() -> None:
    promtool("check", "rules", str(ALERTS))


def test_alert_rules_fire_in_promtool_unit_tests() -> None:
    """monitoring/tests/alerts_test.yml fires every alert on the series that should, and not on others."""
    promtool("test", "rules", str(MONITORING / "tests" / "alerts_test.yml"))
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "tests" / "alerts_test.yml").read_text()))
    assert {name for name, _ in alert_queries()} <= tested


def test_compose_and_native_prometheus_configs_load_the_rules(tmp_path: Path) -> None:
    assert prometheus_conf.check() == []  # promtool on the compose config, its scrape token a temp file
    layout = Layout(tmp_path / "run", tmp_path / "run" / "logs")
    path = prometheus_conf.write_native(Settings(), layout)
    assert yaml.safe_load(path.read_text())["rule_files"] == [str(ALERTS)]
    promtool("check", "config", str(path))


def test_queries_read_only_exported_metrics() -> None:
    exported = exported_names()
    queries = [(f"alert {name}", expr) for name, expr in alert_queries()]
    queries += [(f"{board} / {title}", expr) for board, title, expr in dashboard_queries()]
    unknown = [(where, name) for where, expr in queries for name in METRIC.findall(expr) if name not in exported]
    assert not unknown, f"queries name metrics nothing exports: {unknown}"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses PromQL only inside rules, so each query becomes a recording rule, Grafana's
    variables replaced by what they expand to."""
    rules = []
    for i, (board, title, expr) in enumerate(dashboard_queries()):
        plain = expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$worker", ".*")
        rules.append({"record": f"panel_{i}", "expr": plain.replace("$instance", ".*"), "labels": {"panel": title}})
        assert "$" not in rules[-1]["expr"], f"{board} / {title}: unexpanded variable in {expr}"
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    promtool("check", "rules", str(path))


def test_dashboards_json_is_current() -> None:
    command = [sys.executable, "-m", "monitoring.dashboards", "--check"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_provisioned_in_compose() -> None:
    provider = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "dashboards" / "inference.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert f"./monitoring/grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose["services"]["prometheus"]["volumes"]
    uids = [json.loads(dashboards.render(build))["uid"] for build in dashboards.DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)


def test_inter_token_latency_follows_the_engine_label_when_it_changes():
    """The per-token series is kept between tokens; a worker that falls back to another engine counts
    under that engine's label from then on."""
    from services.worker.metrics import WorkerMetrics

    metrics = WorkerMetrics("llama_server", worker="w1")
    for _ in range(2):
        metrics.inter_token("m", 0.01)
    metrics.engine = "llama_cpp"
    metrics.inter_token("m", 0.02)
    count = metrics.registry.get_sample_value
    name = "inference_inter_token_latency_seconds_count"
    assert count(name, {"model_name": "m", "engine": "llama_server", "worker": "w1"}) == 2
    assert count(name, {"model_name": "m", "engine": "llama_cpp", "worker": "w1"}) == 1
