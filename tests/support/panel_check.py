"""Evaluate every Grafana panel's PromQL through a real Prometheus's HTTP API, as Grafana would send it.

Template variables are resolved the way Grafana resolves them: `label_values(metric, label)` through the
label values API, then substituted; `$__rate_interval` becomes a window the caller chooses (Grafana derives
it from the time range and the scrape interval).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from monitoring import dashboards

LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")


@dataclass(frozen=True)
class PanelResult:
    dashboard: str
    title: str
    expr: str
    series: tuple[tuple[str, float], ...]
    """(labels, value) of each series Prometheus returned."""

    @property
    def has_data(self) -> bool:
        """Some finite value: a histogram quantile without observations in the window is NaN, which Grafana
        draws as nothing."""
        return any(math.isfinite(v) for _, v in self.series)

    def shown(self) -> str:
        if not self.series:
            return "NO DATA"
        return ", ".join(f"{labels} {value:.4g}" if labels else f"{value:.4g}" for labels, value in self.series)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query, at `at` (Unix time) when given, so several queries see one moment."""
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        resp = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {expr!r}: {body.get('error')}")
        return body["data"]["result"]

    def label_values(self, match: str, label: str) -> list[str]:
        resp = httpx.get(f"{self.url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10)
        return resp.json()["data"]

    def value(self, expr: str, at: float | None = None) -> float:
        """The summed value of an instant query, 0 when it has no series."""
        return sum(float(r["value"][1]) for r in self.query(expr, at))


def variables(prom: Prometheus, dashboard_json: dict) -> dict[str, list[str]]:
    """Each template variable's values, from the query Grafana would run for it."""
    out = {}
    for var in dashboard_json.get("templating", {}).get("list", []):
        found = LABEL_VALUES.match(var["query"])
        assert found, f"variable {var['name']}: unsupported query {var['query']!r}"
        out[var["name"]] = prom.label_values(found["match"], found["label"])
    return out


def substitute(expr: str, values: dict[str, list[str]], rate_interval: str) -> str:
    """Grafana joins a multi-value selection as a regex alternation, each value regex-escaped."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in sorted(values, key=len, reverse=True):
        joined = "|".join(re.escape(v) for v in values[name])
        expr = expr.replace(f"${name}", "(" + joined.replace("\\", "\\\\") + ")")
    return expr


def _labels(metric: dict) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}" if metric else ""


def evaluate(prom: Prometheus, rate_interval: str, at: float) -> Iterator[PanelResult]:
    for name, build in dashboards.DASHBOARDS.items():
        board = json.loads(dashboards.render(build))
        values = variables(prom, board)
        for title, expr in dashboards.panel_queries(board):
            result = prom.query(substitute(expr, values, rate_interval), at)
            series = tuple((_labels(r["metric"]), float(r["value"][1])) for r in result)
            yield PanelResult(name, title, expr, series)
