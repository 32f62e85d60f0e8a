"""Stop strings never leak to the client, even split across tokens; max_tokens respects the context."""

import pytest

from services.common.jobs import SamplingParams
from services.worker.engines.base import ContextLengthExceeded, clamp_max_tokens
from services.worker.engines.stops import StopMatcher


def run(stops, pieces):
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    if not m.stopped:
        out += m.flush()
    return out, m.stopped


def test_no_stops_passes_through():
    assert run([], ["a", "b"]) == ("ab", False)


def test_stop_split_across_tokens_is_cut():
    assert run(["END"], ["hello E", "N", "D more"]) == ("hello ", True)


def test_partial_prefix_released_when_it_is_not_a_stop():
    assert run(["END"], ["hello E", "x"]) == ("hello Ex", False)


def test_earliest_of_several_stops_wins():
    assert run(["\n", "."], ["one. two\n"]) == ("one", True)


def test_held_text_flushed_at_the_end():
    assert run(["STOP"], ["abc ST"]) == ("abc ST", False)


def test_explicit_max_tokens_over_context_is_400():
    with pytest.raises(ContextLengthExceeded) as info:
        clamp_max_tokens(SamplingParams(max_tokens=100), prompt_tokens=50, context=120)
    assert info.value.status == 400 and info.value.param == "max_tokens"


def test_default_max_tokens_is_clamped_to_fit():
    assert clamp_max_tokens(SamplingParams(max_tokens=100, max_tokens_explicit=False), 50, 120) == 70


def test_prompt_alone_over_context_is_400():
    with pytest.raises(ContextLengthExceeded):
        clamp_max_tokens(SamplingParams(max_tokens=1, max_tokens_explicit=False), 130, 120)
