"""The one thread that touches MLX: it loads the model and runs mlx-lm's continuous batching.

MLX is not thread-safe, so every MLX call (load, sampling set-up, each batch step) happens here.
Caller threads talk to it through a command queue (join / leave the batch) and get tokens back on
a queue per request. A new request joins the running batch at the next step and a finished or
cancelled one leaves it, as in mlx_lm.server; nothing waits for the whole batch to drain.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.5
PROMPT_CACHE_ENTRIES = 10
"""Finished sequences whose KV caches are kept for reuse (mlx_lm.server's default): a prompt that
extends one of them (the next turn of a chat, a repeated system prompt) is prefilled from there."""


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    seed: int | None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(eq=False)
class Submission:
    """One request in the batch. `out` receives `(token, finish_reason | None)` or an exception."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    uid: int | None = None


class SeededSampler:
    """Temperature/top-p sampling with the request's own PRNG key.

    mlx-lm's samplers draw from MLX's global random state, which the whole batch shares, so a seed
    could not make one request repeatable while others come and go. Each request here carries its
    key and splits it once per token.
    """

    def __init__(self, temperature: float, top_p: float, seed: int) -> None:
        import mlx.core as mx

        self.inverse_temperature = 1.0 / temperature
        self.top_p = top_p
        self.key = mx.random.key(seed)

    def __call__(self, logprobs: Any) -> Any:
        import mlx.core as mx
        from mlx_lm.sample_utils import apply_top_p

        if 0.0 < self.top_p < 1.0:
            logprobs = apply_top_p(logprobs, self.top_p)
        self.key, draw = mx.random.split(self.key)
        return mx.random.categorical(logprobs * self.inverse_temperature, key=draw)


class BatchLoop:
    """Owns the model and the BatchGenerator on a daemon thread; `start()` returns once loaded."""

    def __init__(self, model_path: Path, *, slots: int) -> None:
        self.model_path = model_path
        self.slots = slots
        self.tokenizer: Any = None
        self.config: dict[str, Any] = {}
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._prompts: Any = None  # mlx-lm's LRUPromptCache, made on the loop thread
        self.cached_tokens = 0
        """Prompt tokens served from the prompt cache so far (for tests and metrics)."""
        self.running = 0
        """Requests in the batch now; written by the loop thread only (for tests and metrics)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlx-batch", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            self._thread.join()
            raise self._load_error

    def stop(self) -> None:
        if self._thread is not None:
            self._commands.put(None)
            self._thread.join()
            self._thread = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, submission: Submission) -> None:
        self._commands.put(("join", submission))

    def leave(self, submission: Submission) -> None:
        """Take a request out of the batch (cancelled, or stopped by a stop string)."""
        self._commands.put(("leave", submission))

    def _run(self) -> None:
        import mlx.core as mx
        from mlx_lm import load
        from mlx_lm.models.cache import LRUPromptCache

        # A stream of this thread's own, as mlx_lm.server does, so nothing runs on another thread's.
        stream = mx.default_stream(mx.default_device())
        try:
            model, self.tokenizer, self.config = load(str(self.model_path), return_config=True)
        except Exception as exc:  # handed to load()'s caller, which re-raises it
            self._load_error = exc
            self._ready.set()
            return
        self._prompts = LRUPromptCache(max_size=PROMPT_CACHE_ENTRIES)
        self._ready.set()
        log.info("mlx model %s loaded; batching up to %d requests", self.model_path.name, self.slots)
        self._serve(model, stream)
        log.info("mlx batch loop stopped")

    def _new_generator(self, model: Any, stream: Any) -> Any:
        from mlx_lm.generate import BatchGenerator

        eos = sorted(self.tokenizer.eos_token_ids)
        return BatchGenerator(
            model,
            stop_tokens=[[t] for t in eos],
            completion_batch_size=self.slots,
            prefill_batch_size=self.slots,
            stream=stream,
        )

    def _serve(self, model: Any, stream: Any) -> None:
        generator = self._new_generator(model, stream)
        active: dict[int, Submission] = {}
        while True:
            if not self._take_commands(generator, active, block=not active):
                break
            self.running = len(active)
            if not active:
                continue
            try:
                _, responses = generator.next()
            except Exception as exc:  # every request in the batch gets it; a fresh batch follows
                log.exception("mlx batch step failed")
                for sub in active.values():
                    sub.out.put(exc)
                active.clear()
                generator.close()
                generator = self._new_generator(model, stream)
                continue
            for r in responses:
                sub = active.get(r.uid)
                if sub is None:
                    continue
                sub.out.put((r.token, r.finish_reason))
                if r.finish_reason is not None:
                    del active[r.uid]
                    if r.prompt_cache is not None and r.all_tokens:
                        self._prompts.insert_cache(self._cache_key, list(r.all_tokens), r.prompt_cache)
            self.running = len(active)
        for sub in active.values():
            sub.out.put(RuntimeError("the MLX engine was unloaded"))
        self.running = 0
        generator.close()

    def _take_commands(self, generator: Any, active: dict[int, Submission], *, block: bool) -> bool:
        """Apply queued joins and leaves; False once told to stop."""
        while True:
            try:
                command = self._commands.get(timeout=IDLE_POLL_S) if block else self._commands.get_nowait()
            except queue.Empty:
                return True
            block = False
            if command is None:
                return False
            kind, sub = command
            if kind == "join":
                try:
                    self._join(generator, active, sub)
                except Exception as exc:  # this request's fault (say, an empty prompt): tell it alone
                    sub.out.put(exc)
            elif sub.uid in active:
                generator.remove([sub.uid])
                del active[sub.uid]

    def _join(self, generator: Any, active: dict[int, Submission], sub: Submission) -> None:
        from mlx_lm.sample_utils import greedy_sampler, make_logits_processors

        s = sub.sampling
        sampler = (
            greedy_sampler
            if s.temperature <= 0
            else SeededSampler(s.temperature, s.top_p, s.seed if s.seed is not None else random.getrandbits(31))
        )
        processors = make_logits_processors(
            presence_penalty=s.presence_penalty or None, frequency_penalty=s.frequency_penalty or None
        )
        cache, rest = self._prompts.fetch_nearest_cache(self._cache_key, sub.prompt)
        if cache is None or not rest:  # nothing to reuse, or an exact hit with no token left to feed
            cache, rest = None, sub.prompt
        cached = len(sub.prompt) - len(rest)
        (sub.uid,) = generator.insert(
            [rest],
            max_tokens=[sub.max_tokens],
            caches=[cache],
            all_tokens=[sub.prompt[:cached]],
            samplers=[sampler],
            logits_processors=[processors],
        )
        self.cached_tokens += cached
        active[sub.uid] = sub

    @property
    def _cache_key(self) -> str:
        return str(self.model_path)
