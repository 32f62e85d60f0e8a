"""A target over HTTP: the stack's nginx, a running deployment, or llama-server itself.

Raw httpx rather than the `openai` client: on a 2-core box the client's own parsing competes with
the server for CPU, and this tool should spend as little as it can.
"""

from __future__ import annotations

import itertools
import json
import time
from urllib.parse import urlsplit

import httpx

from bench.sample import Sample, failed
from bench.workload import Workload

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class NotLoopback(ValueError):
    """Load tests go to this machine only, never to someone else's server."""


def require_loopback(url: str) -> str:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise NotLoopback(f"{url}: the benchmark only targets 127.0.0.1 / localhost / ::1, not {host!r}")
    return url.rstrip("/")


class HttpTarget:
    """POSTs chat completions to `base_url` + `path`; one pooled client shared by all threads."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout: float = 120.0,
        max_connections: int = 64,
        api_key: str = "bench",
        path: str = "/v1/chat/completions",
        body_overrides: dict | None = None,
    ) -> None:
        """`body_overrides` adapts the shared workload to a server that names models its own way."""
        self.name = name
        self.url = require_loopback(base_url) + path
        self.overrides = body_overrides or {}
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"Authorization": f"Bearer {api_key}"},
        )

    def send(self, workload: Workload, index: int) -> Sample:
        started = time.perf_counter()
        try:
            body = {**workload.body(index), **self.overrides}
            if workload.stream:
                return self._stream(body, started)
            return self._json(body, started)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            return failed(time.perf_counter() - started, f"{type(exc).__name__}: {exc}")

    def _json(self, body: dict, started: float) -> Sample:
        resp = self.client.post(self.url, json=body)
        elapsed = time.perf_counter() - started
        if resp.status_code != 200:
            return failed(elapsed, f"HTTP {resp.status_code}")
        usage = resp.json().get("usage") or {}
        if "completion_tokens" not in usage:
            return failed(elapsed, "no usage in the response")
        return Sample(True, elapsed, None, usage["completion_tokens"], usage.get("prompt_tokens", 0))

    def _stream(self, body: dict, started: float) -> Sample:
        ttft: float | None = None
        usage: dict | None = None
        arrivals: list[float] = []
        rest = b""
        with self.client.stream("POST", self.url, json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                return failed(time.perf_counter() - started, f"HTTP {resp.status_code}")
            for data in resp.iter_bytes():  # one HTTP chunk each: what one write of the server's brought
                lines = (rest + data).split(b"\n")
                rest = lines.pop()
                text = done = False
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # SSE comments (keep-alives), ids, blank separators
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        message = chunk["error"].get("message")
                        return failed(time.perf_counter() - started, f"stream error: {message}")
                    if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                        text = True
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                if text:
                    arrivals.append(time.perf_counter())
                    if ttft is None:
                        ttft = arrivals[0] - started
                if done:
                    break  # unread, the connection is not kept: llama-server drops idle ones, and a POST is not resent
        elapsed = time.perf_counter() - started
        if usage is None:
            return failed(elapsed, "stream ended without usage")
        gaps = tuple(b - a for a, b in itertools.pairwise(arrivals))
        tokens, prompt = usage["completion_tokens"], usage.get("prompt_tokens", 0)
        return Sample(True, elapsed, ttft, tokens, prompt, writes=len(arrivals), write_gaps_s=gaps)

    def close(self) -> None:
        self.client.close()
