"""Issue 27's figures from one `--on-demand` run's requests, and their tables: pure, so a test pins them.

A cold model's first token is compared with its load and a warm model's first token in two ways: the worker
full (the other model must be unloaded first, what the memory budget forces) and the worker empty (the model
before it was released with `keep_alive: 0`), so what the unload costs shows as their difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench import goals
from bench.sample import Sample
from bench.summary import percentile

GOAL_OVER_LOAD_S = 1.0
"""Issue 27: a cold model's first token at most its load time + 1 s over a warm one's."""
TITLE = "goals (issue 27), models loaded when asked for, one worker whose budget holds one of two:"
SERIES = {"full": "after unloading the other model", "free": "into free memory"}


@dataclass(frozen=True)
class Round:
    """A streamed chat to the loaded model, then one to the other, which the worker must load first."""

    warm_model: str
    warm_ttft_s: float | None
    cold_model: str
    cold_ttft_s: float | None
    load_s: float | None
    """The worker's own `loaded_s` for that load (llama-server started until it answers)."""


@dataclass(frozen=True)
class Swapped:
    """One request of the swap run; `swap`: its model was not loaded when it was sent."""

    model: str
    swap: bool
    sample: Sample


def median(values: Sequence[float | None]) -> float | None:
    return percentile([v for v in values if v is not None], 50)


def over_load(rounds: Sequence[Round]) -> list[float | None]:
    """Per round: cold TTFT - (load + warm TTFT), the warm TTFT being the median of the same model's warm ones
    (all models' where it had none): what loading on request adds beyond the load itself."""
    everyone = median([r.warm_ttft_s for r in rounds])
    out: list[float | None] = []
    for r in rounds:
        warm = median([x.warm_ttft_s for x in rounds if x.warm_model == r.cold_model])
        warm = everyone if warm is None else warm
        if r.cold_ttft_s is None or r.load_s is None or warm is None:
            out.append(None)
        else:
            out.append(r.cold_ttft_s - r.load_s - warm)
    return out


def waves(count: int, concurrency: int) -> list[list[int]]:
    """Request indexes in the order sent: the first half one at a time, the rest `concurrency` at once."""
    alone = count // 2
    step = max(concurrency, 1)
    return [[i] for i in range(alone)] + [list(range(i, min(i + step, count))) for i in range(alone, count, step)]


def swap_figures(swapped: Sequence[Swapped]) -> dict:
    """Answered and lost (any request without a complete answer), and the swap times: first token of the
    requests whose model was not loaded when they were sent."""
    lost = [s for s in swapped if not s.sample.ok]
    times = [s.sample.ttft_s for s in swapped if s.swap and s.sample.ok and s.sample.ttft_s is not None]
    errors: dict[str, int] = {}
    for s in lost:
        errors[s.sample.error or "?"] = errors.get(s.sample.error or "?", 0) + 1
    return {
        "requests": len(swapped),
        "answered": len(swapped) - len(lost),
        "lost": len(lost),
        "errors": errors,
        "swaps": sum(s.swap for s in swapped),
        "swap_p50_s": percentile(times, 50),
        "swap_p95_s": percentile(times, 95),
    }


def _reported(key: str, label: str, value: float | None) -> goals.Figure:
    return goals.Figure(key, label, value, None, unit="s")


def series_figures(name: str, rounds: Sequence[Round]) -> list[goals.Figure]:
    how, n = SERIES[name], len(rounds)
    return [
        goals.Figure(
            f"cold_over_load_and_warm_{name}_s",
            f"first token of a model loaded first {how} - (its load + warm first token), median of {n}",
            median(over_load(rounds)),
            GOAL_OVER_LOAD_S,
            at_most=True,
            unit="s",
        ),
        _reported(f"cold_ttft_{name}_s", "  its first token, median", median([r.cold_ttft_s for r in rounds])),
        _reported(f"load_{name}_s", "  its load (the worker's loaded_s), median", median([r.load_s for r in rounds])),
    ]


def figures(series: dict[str, Sequence[Round]], swap: dict) -> list[goals.Figure]:
    """The goal rows in print order; `series` maps SERIES' names to their rounds."""
    warm = [r.warm_ttft_s for rounds in series.values() for r in rounds]
    found = [f for name, rounds in series.items() for f in series_figures(name, rounds)]
    return [
        *found,
        _reported("warm_ttft_s", "first token of a loaded model, median", median(warm)),
        goals.Figure(
            "swap_lost",
            f"swap run: requests lost of {swap['requests']} alternating between two models ({swap['answered']}"
            " answered)",
            swap["lost"],
            0,
            at_most=True,
            unit="lost",
        ),
        _reported(
            "swap_p50_s",
            f"swap time, P50 of {swap['swaps']} (request for the model not loaded -> its first token)",
            swap["swap_p50_s"],
        ),
        _reported("swap_p95_s", "swap time, P95", swap["swap_p95_s"]),
    ]


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def round_table(rounds: Sequence[Round]) -> list[str]:
    lines = [
        "| round | warm model | warm TTFT | cold model | cold TTFT | load | cold - (load + warm) |",
        "|--:|---|--:|---|--:|--:|--:|",
    ]
    for i, (r, over) in enumerate(zip(rounds, over_load(rounds), strict=True), 1):
        lines.append(
            f"| {i} | {r.warm_model} | {_s(r.warm_ttft_s)} | {r.cold_model} | {_s(r.cold_ttft_s)} | {_s(r.load_s)}"
            f" | {_s(over)} |"
        )
    return lines


def text(result: dict) -> list[str]:
    """The rounds of each series, then the goal table, from the run's JSON (`extra_figures['on_demand']`)."""
    lines = ["", f"### on demand: {result['stack']}"]
    for name, rounds in result["series"].items():
        lines += ["", f"cold = loaded {SERIES[name]}:", *round_table([Round(**r) for r in rounds])]
    found = [goals.Figure(**{k: v for k, v in f.items() if k != "met"}) for f in result["goals"].values()]
    return lines + goals.text(found, title=TITLE)
