"""How a worker pool scales on its queue: KEDA's ScaledObject and the HPA behind it, replayed on an arrival trace.

`python deploy/kubernetes/simulate.py [--trace FILE] [--out scaling.png]` reads the pool's thresholds from
the manifest itself (pools/llama-server-gemma-3-270m/pool.yaml: listLength, the running-requests threshold,
pollingInterval, cooldownPeriod, min/max replicas, the scale-down policy; slots from the worker's --slots),
replays the trace (one arrival time in seconds a line; by default a synthetic day-part: idle, a ramp, a burst,
a tail, then idle again, seeded), and prints and plots the replicas KEDA asks for, those ready, the queue and
each request's wait. What it models, second by second:
- a replica serves `slots` requests at once; a request's service time is its tokens over the per-stream rate
  at the replica's concurrency (llama-server on this project's 2-core VM: ~75 tokens/s alone, 1.8x in
  aggregate at 8 concurrent, interpolated between: DESIGN.md, bench/MEASUREMENTS.md);
- every pollingInterval KEDA reads the queue length and the running requests, the HPA wants
  ceil(metric / target) replicas (the larger of the two triggers), scale-up at once, scale-down held by the
  stabilization window and limited to the policy's pods per period; a new replica serves after STARTUP_S
  (a pod scheduled and llama-server's weights loaded);
- at zero replicas a request is queued all the same and waits for a worker (the API's WAIT_FOR_WORKER_S, read
  from base/api.yaml): the queue trigger wakes the pool at the next poll; a request still waiting with no replica
  ready after WAIT_FOR_WORKER_S gets the 503 and leaves the queue (counted); the pool goes back to zero after
  cooldownPeriod with no activity.
A model, not a measurement: its use is to see the thresholds' consequences before a cluster does.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml

POOL = Path(__file__).resolve().parent / "pools" / "llama-server-gemma-3-270m" / "pool.yaml"
API = Path(__file__).resolve().parent / "base" / "api.yaml"
STARTUP_S = 30.0
TOKENS_PER_S_ALONE = 75.0
SPEEDUP_AT_8 = 1.8
ANSWER_TOKENS = (16, 256)
"""Answers' lengths, drawn log-uniformly between these (a chat's short replies and long ones)."""


@dataclass(frozen=True)
class Policy:
    """The ScaledObject's numbers, as the manifest sets them."""

    slots: int
    queued_target: int
    running_target: int
    polling_s: int
    cooldown_s: int
    min_replicas: int
    max_replicas: int
    down_window_s: int
    down_pods: int
    down_period_s: int
    wait_for_worker_s: float
    """The API's: how long a request waits in the queue for a worker when none serves its model."""

    @classmethod
    def from_manifest(cls, path: Path = POOL, api: Path = API) -> Policy:
        docs = {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
        api_docs = [d for d in yaml.safe_load_all(api.read_text()) if d and d["kind"] == "Deployment"]
        env = {e["name"]: e.get("value") for e in api_docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
        so, deployment = docs["ScaledObject"]["spec"], docs["Deployment"]
        worker = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
        args = worker["args"]
        triggers = {t["name"]: t["metadata"] for t in so["triggers"]}
        down = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        return cls(
            slots=int(args[args.index("--slots") + 1]),
            queued_target=int(triggers["queued"]["listLength"]),
            running_target=int(triggers["running"]["threshold"]),
            polling_s=int(so["pollingInterval"]),
            cooldown_s=int(so["cooldownPeriod"]),
            min_replicas=int(so["minReplicaCount"]),
            max_replicas=int(so["maxReplicaCount"]),
            down_window_s=int(down["stabilizationWindowSeconds"]),
            down_pods=int(down["policies"][0]["value"]),
            down_period_s=int(down["policies"][0]["periodSeconds"]),
            wait_for_worker_s=float(env.get("WAIT_FOR_WORKER_S") or 0),
        )


def per_stream_rate(concurrent: int) -> float:
    """Tokens/s one request gets on a replica decoding `concurrent` requests together."""
    c = max(1, concurrent)
    speedup = 1.0 + (SPEEDUP_AT_8 - 1.0) * min(c - 1, 7) / 7
    return TOKENS_PER_S_ALONE * speedup / c


@dataclass
class Request:
    arrived: float
    tokens: float
    started: float | None = None
    left: float = 0.0


@dataclass
class Replica:
    ready_at: float
    running: list[Request] = field(default_factory=list)
    draining: bool = False


@dataclass
class Timeline:
    t: list[float] = field(default_factory=list)
    wanted: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    waits: list[tuple[float, float]] = field(default_factory=list)
    """(arrival, seconds from arrival to the start of its service) of every request served."""
    refused: list[float] = field(default_factory=list)
    """Arrivals of requests that waited WAIT_FOR_WORKER_S with no replica ready: a 503."""


def synthetic_trace(seed: int = 7) -> list[float]:
    """Ten minutes idle, a ten-minute ramp to 1.5 requests/s, a two-minute burst at 4/s, a tail, then idle."""
    rng = random.Random(seed)
    phases = [(600, 0.0, 0.0), (600, 0.05, 1.5), (120, 4.0, 4.0), (600, 1.5, 0.1), (900, 0.0, 0.0)]
    out, start = [], 0.0
    for length, first, last in phases:
        t = 0.0
        while True:
            rate = first + (last - first) * t / length
            t += rng.expovariate(max(rate, 1e-9)) if rate > 0 else length
            if t >= length:
                break
            out.append(start + t)
        start += length
    return out


def simulate(arrivals: list[float], policy: Policy, seed: int = 11, step: float = 0.5) -> Timeline:
    rng = random.Random(seed)
    pending = deque(sorted(arrivals))
    end = (arrivals[-1] if arrivals else 0.0) + 1200
    queue: deque[Request] = deque()
    replicas = [Replica(0.0) for _ in range(policy.min_replicas)]
    history: deque[tuple[float, int]] = deque()  # (time, desired) for the scale-down window
    last_active, last_down = 0.0, -math.inf
    timeline = Timeline()
    t = 0.0
    while t < end:
        while pending and pending[0] <= t:
            tokens = math.exp(rng.uniform(*map(math.log, ANSWER_TOKENS)))
            queue.append(Request(pending.popleft(), tokens))  # queued even with no worker (WAIT_FOR_WORKER_S)
        ready = [r for r in replicas if r.ready_at <= t]
        if not any(not r.draining for r in ready):  # no worker serves the model: waits run out
            for req in [q for q in queue if t - q.arrived >= policy.wait_for_worker_s]:
                queue.remove(req)
                timeline.refused.append(req.arrived)
        for r in ready:  # serve: free slots take from the queue, running requests advance
            while not r.draining and len(r.running) < policy.slots and queue:
                req = queue.popleft()
                req.started, req.left = t, req.tokens
                timeline.waits.append((req.arrived, t - req.arrived))
                r.running.append(req)
            rate = per_stream_rate(len(r.running))
            for req in list(r.running):
                req.left -= rate * step
                if req.left <= 0:
                    r.running.remove(req)
        replicas = [r for r in replicas if not (r.draining and not r.running)]  # drained: gone
        if int(t / step) % int(policy.polling_s / step) == 0:
            running = sum(len(r.running) for r in replicas)
            desired = max(math.ceil(len(queue) / policy.queued_target), math.ceil(running / policy.running_target))
            if queue or running:
                last_active = t
            desired = min(policy.max_replicas, max(policy.min_replicas, desired))
            history.append((t, desired))
            while history and history[0][0] < t - policy.down_window_s:
                history.popleft()
            serving = [r for r in replicas if not r.draining]
            current = len(serving)
            if desired > current:
                replicas += [Replica(t + STARTUP_S) for _ in range(desired - current)]
            elif current > 0 and desired == 0 and t - last_active >= policy.cooldown_s:
                for r in serving:  # KEDA takes an idle pool to zero itself, after the cooldown
                    r.draining = True
            elif current > 0:  # the HPA, never below one while KEDA holds the pool active
                target = max([d for _, d in history] + [1])
                if target < current and t - last_down >= policy.down_period_s:
                    for r in sorted(serving, key=lambda r: len(r.running))[: min(policy.down_pods, current - target)]:
                        r.draining = True  # SIGTERM: it takes no job and finishes its own (preStop, grace)
                    last_down = t
            timeline.t.append(t)
            timeline.wanted.append(len([r for r in replicas if not r.draining]))
            timeline.ready.append(len([r for r in replicas if r.ready_at <= t and not r.draining]))
            timeline.queued.append(len(queue))
        t += step
    return timeline


def summary(timeline: Timeline, policy: Policy, arrivals: list[float]) -> str:
    waits = sorted(w for _, w in timeline.waits)

    def pct(p: float) -> float:
        return waits[min(len(waits) - 1, int(p * len(waits)))] if waits else 0.0

    replica_s = sum(timeline.wanted) * policy.polling_s
    fixed_s = max(timeline.wanted) * (timeline.t[-1] if timeline.t else 0)
    return (
        f"{len(arrivals)} requests; queue wait P50 {pct(0.5):.1f} s, P95 {pct(0.95):.1f} s, max {pct(1.0):.1f} s; "
        f"at most {max(timeline.wanted)} replicas; {replica_s / 3600:.2f} replica-hours against "
        f"{fixed_s / 3600:.2f} for a fixed fleet of that size; {len(timeline.refused)} refused (503) after "
        f"waiting {policy.wait_for_worker_s:g} s for a worker"
    )


def plot(timeline: Timeline, arrivals: list[float], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [x / 60 for x in timeline.t]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    bins = range(0, int(max(timeline.t) / 60) + 2)
    ax1.hist([a / 60 for a in arrivals], bins=bins, color="#888")
    ax1.set_ylabel("arrivals / min")
    ax2.step(minutes, timeline.wanted, where="post", label="replicas (KEDA + HPA)")
    ax2.step(minutes, timeline.ready, where="post", label="ready")
    ax2b = ax2.twinx()
    ax2b.plot(minutes, timeline.queued, color="#c44", alpha=0.6, label="waiting")
    ax2.set_ylabel("replicas")
    ax2b.set_ylabel("requests waiting", color="#c44")
    ax2.legend(loc="upper left")
    ax3.scatter([a / 60 for a, _ in timeline.waits], [w for _, w in timeline.waits], s=4)
    ax3.set_ylabel("queue wait (s)")
    ax3.set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python deploy/kubernetes/simulate.py", description=__doc__.split("\n")[0])
    p.add_argument("--trace", type=Path, help="arrival times in seconds, one a line (default: synthetic)")
    p.add_argument("--out", type=Path, help="write the plot here (PNG)")
    args = p.parse_args(argv)
    policy = Policy.from_manifest()
    arrivals = [float(line) for line in args.trace.read_text().split() if line] if args.trace else synthetic_trace()
    timeline = simulate(arrivals, policy)
    line = summary(timeline, policy, arrivals)
    print(line)
    if args.out:
        plot(timeline, arrivals, args.out, f"{POOL.parent.name}: {line.split(';')[1].strip()}")
        print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
