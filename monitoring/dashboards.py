"""Grafana dashboards as code, built with Grafana's own grafana-foundation-sdk.

`python -m monitoring.dashboards --write` regenerates monitoring/grafana/dashboards/*.json, which Grafana
provisions (monitoring/grafana/provisioning/dashboards); `--check` exits 1 naming each stale file, as CI does.
A dev tool, so it lives beside the JSON it writes and not in the shipped `services` package.
Queries read only the metrics the code exports; API replicas all report the same queue and worker gauges,
hence the `max by (...)` before any sum across them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from monitoring.panels import CLIENT_ROUTES, RATE, TOKENS, base, graph, percentiles, single, variable

OUT_DIR = Path(__file__).resolve().parent / "grafana" / "dashboards"


# -- dashboards ----------------------------------------------------------------------------------------
FREE_SLOTS = (
    "max by (worker) (api_worker_slots - api_worker_busy_slots)"
    " unless on (worker) max by (worker) (api_worker_draining) == 1"
)


def overview() -> db.Dashboard:
    requests = f"sum(rate(api_requests_total{{{CLIENT_ROUTES}}}[{RATE}]))"
    success = f'sum(rate(api_requests_total{{{CLIENT_ROUTES}, status!~"5.."}}[{RATE}])) / {requests}'
    return (
        base("inference-overview", "Inference: overview", "Is it up, how fast, how deep is the queue.")
        .with_row(db.Row("Now"))
        .with_panel(single("Request rate", "reqps", requests, "Client requests (/v1/...) per second, all replicas."))
        .with_panel(single("Success ratio", "percentunit", success, "Client requests not answered with a 5xx."))
        .with_panel(
            single("Tokens/s", TOKENS, f"sum(rate(api_generation_tokens_total[{RATE}]))", "Tokens sent to clients.")
        )
        .with_panel(
            single("Queue depth", "short", "sum(max by (model_name) (api_queue_depth))", "Jobs waiting, all models.")
        )
        .with_panel(
            single(
                "Live workers",
                "short",
                "count(max by (worker) (api_worker_slots)) or vector(0)",
                "Workers whose heartbeat has not expired, draining ones included.",
            )
        )
        .with_panel(
            single(
                "Free slots", "short", f"sum({FREE_SLOTS}) or vector(0)", "Slots ready for a job (draining excluded)."
            )
        )
        .with_row(db.Row("Traffic"))
        .with_panel(
            graph(
                "Requests by status",
                "reqps",
                [(f"sum by (status) (rate(api_requests_total{{{CLIENT_ROUTES}}}[{RATE}]))", "{{status}}")],
                "Client requests per second by HTTP status.",
            )
        )
        .with_panel(graph("Success ratio", "percentunit", [(success, "success")], "Share not answered with a 5xx."))
        .with_panel(
            graph(
                "Tokens/s by model",
                TOKENS,
                [(f"sum by (model_name) (rate(api_generation_tokens_total[{RATE}]))", "{{model_name}}")],
                "Generated tokens per second sent to clients.",
            )
        )
        .with_panel(
            graph(
                "Finished requests by reason",
                "reqps",
                [(f"sum by (finished_reason) (rate(api_request_finished_total[{RATE}]))", "{{finished_reason}}")],
                "stop, length, cancelled (the client left) and errors.",
            )
        )
        .with_row(db.Row("Latency"))
        .with_panel(
            graph(
                "Time to first token",
                "s",
                percentiles("api_time_to_first_token_seconds"),
                "From acceptance by the API to the first token, queue time included.",
            )
        )
        .with_panel(
            graph(
                "End-to-end latency",
                "s",
                percentiles("api_e2e_request_latency_seconds"),
                "From acceptance by the API to the last token.",
            )
        )
        .with_row(db.Row("Capacity"))
        .with_panel(
            graph(
                "Queue depth by model",
                "short",
                [("max by (model_name) (api_queue_depth)", "{{model_name}}")],
                "Jobs waiting in each model's queue.",
            )
        )
        .with_panel(
            graph(
                "Workers and slots",
                "short",
                [
                    ("count(max by (worker) (api_worker_slots)) or vector(0)", "live workers"),
                    (f"sum({FREE_SLOTS}) or vector(0)", "free slots"),
                    ("sum(max by (worker) (api_worker_busy_slots)) or vector(0)", "busy slots"),
                ],
                "From the workers' heartbeats in Redis.",
            )
        )
    )


def per_model() -> db.Dashboard:
    api = 'model_name=~"$model"'
    return (
        base("inference-model", "Inference: per model", "Latency, throughput, queue and workers of each model.")
        .with_variable(variable("model", "Model", "label_values(api_model_workers, model_name)"))
        .with_panel(
            graph(
                "Finished requests",
                "reqps",
                [
                    (
                        f"sum by (model_name, finished_reason) (rate(api_request_finished_total{{{api}}}[{RATE}]))",
                        "{{model_name}} {{finished_reason}}",
                    )
                ],
                "Completions per second by finish reason.",
            )
        )
        .with_panel(
            graph(
                "Tokens/s",
                TOKENS,
                [
                    (
                        f"sum by (model_name) (rate(inference_prompt_tokens_total{{{api}}}[{RATE}]))",
                        "{{model_name}} prompt",
                    ),
                    (
                        f"sum by (model_name) (rate(inference_generation_tokens_total{{{api}}}[{RATE}]))",
                        "{{model_name}} generated",
                    ),
                ],
                "Prompt tokens processed and tokens generated by the workers.",
            )
        )
        .with_panel(
            graph(
                "Time to first token",
                "s",
                percentiles("api_time_to_first_token_seconds", api, "model_name"),
                "Seen by the API, from acceptance: queue time included.",
            )
        )
        .with_panel(
            graph(
                "End-to-end latency",
                "s",
                percentiles("api_e2e_request_latency_seconds", api, "model_name"),
                "Seen by the API, from acceptance to the last token.",
            )
        )
        .with_panel(
            graph(
                "Inter-token latency",
                "s",
                percentiles("inference_inter_token_latency_seconds", api, "model_name"),
                "Time between tokens, measured by the workers.",
            )
        )
        .with_panel(
            graph(
                "Queue time",
                "s",
                percentiles("inference_request_queue_time_seconds", api, "model_name"),
                "From acceptance to a worker taking the job.",
            )
        )
        .with_panel(
            graph(
                "Queue depth and running requests",
                "short",
                [
                    (f"max by (model_name) (api_queue_depth{{{api}}})", "{{model_name}} waiting"),
                    (f"sum by (model_name) (inference_num_requests_running{{{api}}})", "{{model_name}} running"),
                ],
                "Jobs waiting in the model's queue and generating in its workers.",
            )
        )
        .with_panel(
            graph(
                "Live workers",
                "short",
                [(f"max by (model_name) (api_model_workers{{{api}}})", "{{model_name}}")],
                "Workers taking new requests for the model; 0 means every request for it answers 503.",
            )
        )
    )


def per_worker() -> db.Dashboard:
    reg = 'worker=~"$worker"'
    own = 'job="worker", instance=~"$instance"'
    return (
        base("inference-worker", "Inference: per worker", "Slots and state of each worker, and what it measures.")
        .with_variable(variable("worker", "Worker", "label_values(api_worker_slots, worker)"))
        .with_variable(variable("instance", "Metrics endpoint", 'label_values(up{job="worker"}, instance)'))
        .with_row(db.Row("From the registry (heartbeats in Redis), by worker id"))
        .with_panel(
            graph(
                "Busy and total slots",
                "short",
                [
                    (f"max by (worker) (api_worker_busy_slots{{{reg}}})", "{{worker}} busy"),
                    (f"max by (worker) (api_worker_slots{{{reg}}})", "{{worker}} slots"),
                ],
                "A worker with every slot busy is saturated; its model's queue grows next.",
            )
        )
        .with_panel(
            graph(
                "Uptime",
                "s",
                [(f"time() - max by (worker) (api_worker_start_time_seconds{{{reg}}})", "{{worker}}")],
                "Since the worker process started; a new worker id with a short uptime replaced one that died.",
                width=6,
            )
        )
        .with_panel(
            graph(
                "Draining",
                "short",
                [(f"max by (worker) (api_worker_draining{{{reg}}})", "{{worker}}")],
                "1 while the worker finishes its jobs before it stops, taking no new one.",
                width=6,
            )
        )
        .with_row(db.Row("From the worker's own metrics endpoint, by instance"))
        .with_panel(
            graph(
                "Scrape up",
                "short",
                [(f"up{{{own}}}", "{{instance}}")],
                "1 while Prometheus reaches the worker's metrics port.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Running requests",
                "short",
                [
                    (
                        f"sum by (instance, model_name) (inference_num_requests_running{{{own}}})",
                        "{{instance}} {{model_name}}",
                    )
                ],
                "Requests generating now.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Generated tokens/s",
                TOKENS,
                [(f"sum by (instance) (rate(inference_generation_tokens_total{{{own}}}[{RATE}]))", "{{instance}}")],
                "Throughput of the worker's engine.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Time to first token",
                "s",
                percentiles("inference_time_to_first_token_seconds", own, "instance"),
                "Measured by the worker, from acceptance by the API.",
            )
        )
        .with_panel(
            graph(
                "Inter-token latency",
                "s",
                percentiles("inference_inter_token_latency_seconds", own, "instance"),
                "Time between tokens.",
            )
        )
        .with_panel(
            graph(
                "Finished requests",
                "reqps",
                [
                    (
                        f"sum by (instance, finished_reason) (rate(inference_request_success_total{{{own}}}[{RATE}]))",
                        "{{instance}} {{finished_reason}}",
                    )
                ],
                "Finished requests by reason.",
                width=24,
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "inference-overview.json": overview,
    "inference-model.json": per_model,
    "inference-worker.json": per_worker,
}


# -- output --------------------------------------------------------------------------------------------
def _number_panels(model: dm.Dashboard) -> None:
    """Stable panel ids (the SDK leaves them unset, and Grafana would pick new ones on every load)."""
    for i, panel in enumerate(model.panels or [], start=1):
        panel.id_val = i


def render(build: Callable[[], db.Dashboard]) -> str:
    model = build().build()
    _number_panels(model)
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def panel_queries(dashboard_json: dict) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query of a rendered dashboard: what a test sends to Prometheus."""
    for panel in dashboard_json.get("panels", []):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    problems = []
    for name, build in DASHBOARDS.items():
        path = out_dir / name
        if not path.exists() or path.read_text() != render(build):
            problems.append(f"{path} is stale: run python -m monitoring.dashboards --write")
    extra = sorted(p for p in out_dir.glob("*.json") if p.name not in DASHBOARDS)
    problems += [f"{p} is not generated by monitoring/dashboards.py: remove it" for p in extra]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.dashboards", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 naming each dashboard JSON that is stale")
    mode.add_argument("--write", action="store_true", help="regenerate monitoring/grafana/dashboards/*.json")
    args = parser.parse_args(argv)
    if args.write:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for name, build in DASHBOARDS.items():
            (OUT_DIR / name).write_text(render(build))
        return 0
    problems = stale()
    print("\n".join(problems) or "dashboards OK", file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
