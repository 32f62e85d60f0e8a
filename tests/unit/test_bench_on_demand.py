"""bench --on-demand's pure parts: what loading adds over load + warm, the swap run's waves and counts, the goal
rows and their table, the options."""

from __future__ import annotations

import pytest

from bench import goals
from bench.on_demand_figures import Round, Swapped, figures, over_load, swap_figures, text, waves
from bench.options import parse
from bench.sample import Sample, failed

A, B = "gemma-3-270m", "smollm2-135m-instruct"


def test_over_load_takes_the_warm_first_token_of_the_same_model():
    rounds = [Round(A, 0.1, B, 5.0, 3.0), Round(B, 0.5, A, 6.0, 4.0), Round(A, 0.3, B, None, 3.0)]
    # B's warm median is 0.5, A's is 0.2 (0.1, 0.3): a slower warm model must not hide as load overhead
    assert over_load(rounds) == pytest.approx([5.0 - 3.0 - 0.5, 6.0 - 4.0 - 0.2, None])
    alone = [Round(A, 0.2, B, 4.0, 3.0)]  # B never warm: all models' warm median stands in
    assert over_load(alone) == pytest.approx([0.8])


def test_waves_send_half_alone_then_groups():
    assert waves(8, 3) == [[0], [1], [2], [3], [4, 5, 6], [7]]
    assert waves(2, 4) == [[0], [1]]
    assert sorted(i for wave in waves(13, 4) for i in wave) == list(range(13))


def test_swap_figures_count_every_failure_as_lost_and_time_only_swaps():
    swapped = [
        Swapped(A, True, Sample(True, 2.0, 1.0, 8)),
        Swapped(B, True, Sample(True, 4.0, 3.0, 8)),
        Swapped(A, False, Sample(True, 0.5, 0.1, 8)),  # its model was loaded: no swap, not timed
        Swapped(B, True, failed(9.0, "HTTP 503")),
    ]
    swap = swap_figures(swapped)
    assert (swap["requests"], swap["answered"], swap["lost"], swap["swaps"]) == (4, 3, 1, 3)
    assert swap["errors"] == {"HTTP 503": 1}
    assert swap["swap_p50_s"] == pytest.approx(2.0) and swap["swap_p95_s"] == pytest.approx(2.9)


def test_the_goal_rows_pass_and_miss_on_their_figures():
    fast = [Round(A, 0.1, B, 3.5, 3.0), Round(B, 0.1, A, 3.6, 3.0)]
    slow = [Round(A, 0.1, B, 9.0, 3.0), Round(B, 0.1, A, 9.0, 3.0)]
    swap = swap_figures([Swapped(A, True, Sample(True, 2.0, 1.0, 8)), Swapped(B, True, failed(1.0, "x"))])
    found = {f.key: f for f in figures({"full": slow, "free": fast}, swap)}
    assert found["cold_over_load_and_warm_free_s"].met is True
    assert found["cold_over_load_and_warm_full_s"].met is False
    assert found["swap_lost"].value == 1 and found["swap_lost"].met is False
    result = {
        "stack": "test",
        "series": {"full": [r.__dict__ for r in slow], "free": [r.__dict__ for r in fast]},
        "goals": goals.to_json(found.values()),
    }
    lines = "\n".join(text(result))
    assert "| 5.90 s | <= 1 s | MISS |" in lines and "| 0.45 s | <= 1 s | pass |" in lines
    assert "| 1 lost | <= 0 | MISS |" in lines


def test_options_on_demand_alone():
    o = parse(["--on-demand", "--swap-requests", "6", "--swap-concurrency", "2"])
    assert o.on_demand and o.modes == () and not o.gateway and not o.engines
    assert (o.on_demand_rounds, o.swap_requests, o.swap_concurrency) == (5, 6, 2)
    assert not parse([]).on_demand
