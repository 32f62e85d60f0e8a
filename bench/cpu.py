"""CPU seconds spent by the stack's processes during a level, to put a CPU cost on each request.

psutil reads each process tree (gunicorn and nginx masters with their workers); the bench's own
process is measured too, since on a small box the load generator competes for the same cores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psutil

ENGINE_PROCESSES = frozenset({"llama-server"})
"""A worker's own sidecar is the engine, not the gateway: its CPU is not the worker's."""


def tree_cpu_seconds(pid: int) -> float:
    """user + system CPU of a process and all its live descendants but engine sidecars; 0 when it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *(p for p in root.children(recursive=True) if _name(p) not in ENGINE_PROCESSES)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue  # exited between listing and reading: its time is lost, a rounding error here
        total += times.user + times.system
    return total


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle and iowait, since boot."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuMeter:
    """Groups of PIDs by role (api, nginx, redis, worker); `bench` is this process.

    `since` also reports `others`: what the rest of the machine burnt meanwhile. On a shared box a
    busy neighbour slows llama.cpp far more than its share (its threads spin at barriers), so a run
    that had one must say so.
    """

    def __init__(self, groups: Mapping[str, list[int]] | None = None) -> None:
        self.groups = dict(groups or {})

    def snapshot(self) -> dict[str, float]:
        spent = {name: sum(tree_cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}
        own = os.times()  # this process alone: the stack it launched are its children, counted above
        spent["bench"] = own.user + own.system
        spent["machine"] = machine_busy_seconds()
        return spent

    def since(self, before: Mapping[str, float]) -> dict[str, float]:
        """CPU seconds per role since `before`, with `others` = machine - all roles (never negative)."""
        now = self.snapshot()
        spent = {name: max(0.0, now[name] - before.get(name, 0.0)) for name in now}
        machine = spent.pop("machine")
        spent["others"] = max(0.0, machine - sum(spent.values()))
        return spent
