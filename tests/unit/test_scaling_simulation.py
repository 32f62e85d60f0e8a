"""deploy/kubernetes/simulate.py reads the pool's thresholds from its manifest and replays a trace: a burst
scales the pool up from zero (woken by the queued jobs themselves, WAIT_FOR_WORKER_S), every request is served,
and an idle pool goes back to zero after the cooldown."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

from services.common.settings import ROOT

SPEC = importlib.util.spec_from_file_location("simulate", ROOT / "deploy" / "kubernetes" / "simulate.py")
assert SPEC is not None and SPEC.loader is not None
simulate = importlib.util.module_from_spec(SPEC)
sys.modules["simulate"] = simulate
SPEC.loader.exec_module(simulate)


def test_policy_is_the_manifests() -> None:
    policy = simulate.Policy.from_manifest()
    assert (policy.slots, policy.queued_target, policy.running_target) == (8, 8, 8)
    assert (policy.min_replicas, policy.polling_s) == (0, 5)
    assert policy.wait_for_worker_s == 120, "the API Deployment's WAIT_FOR_WORKER_S"


def test_a_burst_scales_up_from_zero_and_back() -> None:
    policy = simulate.Policy.from_manifest()
    burst = [i * 0.1 for i in range(200)]  # 200 requests in 20 s
    timeline = simulate.simulate(burst, policy)
    assert timeline.ready[0] == 0 and max(timeline.wanted) > 1, "from zero: the first poll asks for a replica"
    assert len(timeline.waits) == len(burst), "every request is served"
    first_wait = min(w for a, w in timeline.waits if a == 0.0)
    assert first_wait >= simulate.STARTUP_S, "a pool at zero makes the first request wait for a replica to start"
    assert first_wait <= simulate.STARTUP_S + policy.polling_s, "woken at the first poll that sees the queued job"
    assert timeline.refused == []
    assert timeline.wanted[-1] == 0, "back to zero after the cooldown"


def test_no_traffic_no_replicas() -> None:
    timeline = simulate.simulate([], simulate.Policy.from_manifest())
    assert max(timeline.wanted) == 0


def test_a_wait_shorter_than_a_start_is_refused() -> None:
    policy = dataclasses.replace(simulate.Policy.from_manifest(), wait_for_worker_s=10)
    timeline = simulate.simulate([0.0, 1.0], policy)
    assert timeline.refused == [0.0, 1.0] and timeline.waits == [], "503 after the wait, never served later"
