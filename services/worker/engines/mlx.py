"""MLX through mlx-lm: one model shared by every slot via continuous batching.

Where llama.cpp gives each slot its own context, MLX batches: all `slots` concurrent `generate()`
calls feed one BatchGenerator on one thread (see mlx_batch.py), so N requests cost one forward pass
per step. Caller threads only tokenize, detokenize, match stop strings and watch for cancellation.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from services.common.jobs import ChatMessage
from services.worker.engines import echo, features
from services.worker.engines.base import (
    CancelCheck,
    EngineError,
    Finish,
    GenerationItem,
    GenerationRequest,
    TokenChunk,
    clamp_max_tokens,
)
from services.worker.engines.llama_cpp import fold_system
from services.worker.engines.mlx_batch import BatchLoop, Sampling, Submission
from services.worker.engines.stops import StopMatcher

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05
"""How often a caller waiting for its next token looks at `cancelled()` (prefill can take a while)."""
DEFAULT_CONTEXT = 4096
FEATURES = frozenset({"echo"})
"""Plain sampling, and `echo` as text; the rest is a 400 (logprobs too: the batch loop keeps no logits)."""


def gemma_prompt(messages: Sequence[ChatMessage]) -> str:
    """Gemma's turn format, for tokenizers without a chat template (the converted base GGUF has none)."""
    turns = [
        f"<start_of_turn>{'model' if t['role'] == 'assistant' else t['role']}\n{t['content']}<end_of_turn>\n"
        for t in fold_system(messages)
    ]
    return "".join(turns) + "<start_of_turn>model\n"


class MLXEngine:
    """In-process mlx-lm; `slots` requests share one model through continuous batching."""

    templates_chat = False
    calls_before_wait = False

    def __init__(self, model_path: Path, *, slots: int, name: str = "mlx") -> None:
        self.model_path = model_path
        self.slots = slots
        self.name = name
        self._loop: BatchLoop | None = None
        self._tokenizer: Any = None
        self._context = DEFAULT_CONTEXT

    def load(self) -> None:
        loop = BatchLoop(self.model_path, slots=self.slots)
        loop.start()
        self._loop, self._tokenizer = loop, loop.tokenizer
        config = loop.config.get("text_config", loop.config)
        self._context = int(config.get("max_position_embeddings") or DEFAULT_CONTEXT)
        log.info("mlx loaded %s: %d slot(s), context %d", self.model_path.name, self.slots, self._context)

    def unload(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        self._loop = None
        self._tokenizer = None

    def capacity(self) -> int:
        return self.slots

    def running(self) -> int:
        """Requests in the batch now; a cancelled one is gone from it within a step."""
        return self._loop.running if self._loop is not None else 0

    def context_length(self) -> int:
        return self._context

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> str:
        if self._tokenizer.has_chat_template:
            turns = [{"role": m.role, "content": m.content} for m in messages]
            return self._tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return gemma_prompt(messages)

    def _encode_prompt(self, prompt: str) -> list[int]:
        """BOS is added unless the text already starts with it (a chat template may write it)."""
        bos = getattr(self._tokenizer, "bos_token", None)
        add_special = not (bos and prompt.startswith(bos))
        ids = list(self._tokenizer.encode(prompt, add_special_tokens=add_special))
        if not ids and getattr(self._tokenizer, "bos_token_id", None) is not None:
            ids = [self._tokenizer.bos_token_id]
        return ids

    def generate(self, request: GenerationRequest, cancelled: CancelCheck) -> Iterator[GenerationItem]:
        features.require(request.params, self.name, FEATURES)
        yield from echo.text_only(request, self._generate(request, cancelled))

    def _generate(self, request: GenerationRequest, cancelled: CancelCheck) -> Iterator[GenerationItem]:
        if self._loop is None:
            raise EngineError("the MLX engine is not loaded")
        loop, params = self._loop, request.params
        prompt = self._encode_prompt(request.prompt)
        limit = clamp_max_tokens(params, len(prompt), self._context)
        sampling = Sampling(
            params.temperature, params.top_p, params.seed, params.presence_penalty, params.frequency_penalty
        )
        sub = Submission(prompt, limit, sampling)
        detokenizer = self._tokenizer.detokenizer
        stops = StopMatcher(params.stop)
        produced, pending, reason, in_batch = 0, 0, "length", True
        loop.submit(sub)
        try:
            while True:
                if cancelled():
                    reason = "stop"
                    break
                item = self._next(loop, sub)
                if item is None:
                    continue
                token, finish = item
                in_batch = finish is None
                if finish == "stop":  # an EOS token: it ends the text and is not part of it
                    reason = "stop"
                    break
                produced += 1
                pending += 1
                detokenizer.add_token(token)
                text = stops.feed(detokenizer.last_segment)
                if text:
                    yield TokenChunk(text, pending)
                    pending = 0
                if stops.stopped:
                    reason = "stop"
                    break
                if finish == "length":
                    break
        finally:
            if in_batch:  # cancelled, a stop string, or the caller went away: free the batch row
                loop.leave(sub)
        tail = ""
        if not stops.stopped:
            detokenizer.finalize()
            tail = stops.feed(detokenizer.last_segment)
            if stops.stopped:
                reason = "stop"
            else:
                tail += stops.flush()
        if tail or pending:
            yield TokenChunk(tail, pending)
        yield Finish(reason, len(prompt), produced)

    @staticmethod
    def _next(loop: BatchLoop, sub: Submission) -> tuple[int, str | None] | None:
        """The next token, or None after a short wait so the caller can look at `cancelled()`."""
        try:
            item = sub.out.get(timeout=CANCEL_POLL_S)
        except queue.Empty:
            if not loop.alive():
                raise EngineError("the MLX batch loop is not running") from None
            return None
        if isinstance(item, BaseException):
            raise EngineError(f"MLX generation failed: {item}") from item
        return item
