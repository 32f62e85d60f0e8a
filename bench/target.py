"""What the load runner drives: anything that can send one request and time it."""

from __future__ import annotations

from typing import Protocol

from bench.sample import Sample
from bench.workload import Workload


class Target(Protocol):
    """Safe to call from several threads at once; `send` never raises, it reports a failed Sample."""

    name: str

    def send(self, workload: Workload, index: int) -> Sample: ...

    def close(self) -> None: ...
