"""deploy/kubernetes/simulate.py reads the pool's thresholds from its manifest and replays a trace: a burst
scales the pool up from zero, every request is served, and an idle pool goes back to zero after the cooldown."""

from __future__ import annotations

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


def test_a_burst_scales_up_from_zero_and_back() -> None:
    policy = simulate.Policy.from_manifest()
    burst = [i * 0.1 for i in range(200)]  # 200 requests in 20 s
    timeline = simulate.simulate(burst, policy)
    assert timeline.wanted[0] == 0 and max(timeline.wanted) > 1
    assert len(timeline.waits) == len(burst), "every request is served"
    first_wait = min(w for a, w in timeline.waits if a == 0.0)
    assert first_wait >= simulate.STARTUP_S, "a pool at zero makes the first request wait for a replica to start"
    assert timeline.wanted[-1] == 0, "back to zero after the cooldown"


def test_no_traffic_no_replicas() -> None:
    timeline = simulate.simulate([], simulate.Policy.from_manifest())
    assert max(timeline.wanted) == 0
