"""The benchmark's pure parts: percentiles, level summaries, options, the instant engine's contract."""

from __future__ import annotations

import pytest

from bench.http_target import NotLoopback, require_loopback
from bench.instant_engine import InstantEngine
from bench.options import parse
from bench.sample import Sample, failed
from bench.summary import percentile, summarize
from services.common.jobs import ChatMessage, SamplingParams
from services.worker.engines.base import Engine, Finish, GenerationRequest, TokenChunk


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(1, 101))), 95) == pytest.approx(95.05)


def test_summary_counts_tokens_of_successes_only():
    samples = [Sample(True, 1.0, 0.1, 10), Sample(True, 3.0, 0.3, 20), failed(0.5, "HTTP 503")]
    s = summarize(samples, concurrency=2, wall_s=4.0)
    assert (s.requests, s.ok, s.completion_tokens) == (3, 2, 30)
    assert s.success_rate == pytest.approx(2 / 3)
    assert s.tokens_per_s == pytest.approx(7.5) and s.requests_per_s == pytest.approx(0.5)
    assert (s.latency_p50_s, s.ttft_p50_s) == (2.0, pytest.approx(0.2))
    assert s.errors == {"HTTP 503": 1}


def test_summary_tells_how_often_a_stream_moves():
    """Writes with text per streamed request and the gaps between them, over the successes that had any:
    a JSON answer or the in-process target (no writes) must not drag the mean towards zero."""
    samples = [
        Sample(True, 1.0, 0.1, 64, writes=3, write_gaps_s=(0.05, 0.05)),
        Sample(True, 1.0, 0.1, 64, writes=5, write_gaps_s=(0.01, 0.02, 0.03, 0.2)),
        Sample(True, 1.0, None, 64),
        Sample(False, 1.0, writes=9, write_gaps_s=(9.0,)),
    ]
    s = summarize(samples, concurrency=2, wall_s=2.0)
    assert s.writes_per_request == 4.0
    assert s.write_gap_p50_s == pytest.approx(0.04) and s.write_gap_p95_s == pytest.approx(0.1625)
    none = summarize([Sample(True, 1.0, 0.1, 8)], concurrency=1, wall_s=1.0)
    assert (none.writes_per_request, none.write_gap_p50_s) == (None, None)


def test_options_defaults_and_gateway_alone():
    o = parse([])
    assert o.modes == ("direct", "stack") and o.levels == (1, 2, 5, 8, 10, 15, 20) and o.max_tokens == 64
    assert o.requests_at(1) == 8 and o.requests_at(20) == 40
    g = parse(["--gateway"])
    assert g.modes == () and g.gateway
    assert parse(["--concurrency", "1,4", "--requests", "3"]).requests_at(4) == 3
    with pytest.raises(SystemExit):
        parse(["--mode", "bogus"])


def test_load_tests_stay_on_this_machine():
    assert require_loopback("http://127.0.0.1:8001/") == "http://127.0.0.1:8001"
    assert require_loopback("http://localhost:8001")
    with pytest.raises(NotLoopback):
        require_loopback("http://10.0.0.5:8001")


def test_instant_engine_keeps_the_engine_contract():
    engine = InstantEngine(slots=3)
    assert isinstance(engine, Engine) and engine.capacity() == 3
    prompt = engine.apply_chat_template([ChatMessage(role="user", content="hi there")])
    request = GenerationRequest("r1", prompt, SamplingParams(max_tokens=5, temperature=0.0))
    items = list(engine.generate(request, lambda: False))
    assert [type(i) for i in items] == [TokenChunk] * 5 + [Finish]
    assert items[-1] == Finish("length", engine.count_tokens(prompt), 5)
    stopped = list(engine.generate(request, lambda: True))
    assert stopped == [Finish("stop", engine.count_tokens(prompt), 0)]


def test_instant_engine_is_not_selectable_by_the_worker():
    from services.common.catalog import Catalog
    from services.common.settings import Settings
    from services.worker.engines.factory import ENGINES, EngineUnavailable, build_engine

    settings = Settings()
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    assert "instant" not in ENGINES
    with pytest.raises(EngineUnavailable):
        build_engine("instant", catalog.default, catalog=catalog, settings=settings, slots=1)
