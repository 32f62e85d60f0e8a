"""PNG charts of a run: one line per mode against concurrency, so flat throughput shows at a glance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.summary import LevelSummary

PANELS = (
    ("tokens_per_s", "generated tokens/s", 1.0),
    ("requests_per_s", "requests/s", 1.0),
    ("latency_p50_s", "P50 latency (s)", 1.0),
    ("ttft_p50_s", "P50 time to first token (ms)", 1000.0),
)


def plot_modes(series: Mapping[str, Sequence[LevelSummary]], path: Path, title: str) -> Path | None:
    """Four panels against concurrency; nothing is written when there is nothing to draw."""
    series = {name: levels for name, levels in series.items() if levels}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (field, label, scale) in zip(axes.flat, PANELS, strict=True):
        for color, (name, levels) in enumerate(series.items()):
            points = [(lv.concurrency, getattr(lv, field)) for lv in levels if getattr(lv, field) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, [y * scale for y in ys], marker="o", label=name, color=f"C{color}")  # same color per mode
        ax.set_xticks(sorted({lv.concurrency for levels in series.values() for lv in levels}))
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    axes.flat[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
