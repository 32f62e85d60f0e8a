"""An engine that answers at once: a benchmark tool to measure the gateway alone, never a default.

Nothing in the worker's engine factory or INFERENCE_ENGINE can select it; only
`python -m bench.instant_worker` runs it. It still goes through every step a real engine
does (template, one chunk per token, which the worker batches as it would a real engine's, a Finish
with usage), so what is measured is the gateway's path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from services.common.jobs import ChatMessage
from services.worker.engines.base import CancelCheck, Finish, GenerationItem, GenerationRequest, TokenChunk


class InstantEngine:
    """Yields `max_tokens` one-token chunks with no model behind them; tokens are whitespace words."""

    name = "instant"
    templates_chat = False
    calls_before_wait = False

    def __init__(self, slots: int = 1, context: int = 4096) -> None:
        self.slots = slots
        self.context = context

    def load(self) -> None:
        """Nothing to load: that is the point."""

    def unload(self) -> None:
        """Nothing was loaded."""

    def capacity(self) -> int:
        return self.slots

    def context_length(self) -> int:
        return self.context

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> str:
        return "\n".join(f"{m.role}: {m.content}" for m in messages) + "\nassistant:"

    def generate(self, request: GenerationRequest, cancelled: CancelCheck) -> Iterator[GenerationItem]:
        prompt_tokens = self.count_tokens(request.prompt)
        produced = 0
        for _ in range(request.params.max_tokens):
            if cancelled():
                yield Finish("stop", prompt_tokens, produced)
                return
            produced += 1
            yield TokenChunk(" ok", 1)
        yield Finish("length", prompt_tokens, produced)
