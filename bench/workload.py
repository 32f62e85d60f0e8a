"""What every benchmarked request asks for, identical across modes so the numbers compare."""

from __future__ import annotations

from dataclasses import dataclass

# Short, varied prompts: the same list (and order) in every mode, so prefix reuse helps all alike.
PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe a busy market in the morning.",
    "Write a letter to a friend about the sea.",
    "List some reasons people enjoy gardening.",
    "Tell me about the history of bread.",
    "Describe a thunderstorm over the mountains.",
    "Write a poem about a train at night.",
)


@dataclass(frozen=True)
class Workload:
    """One chat request shape; `index` picks the prompt so consecutive requests differ."""

    model: str = "gemma-3-270m"
    max_tokens: int = 64
    temperature: float = 0.0
    stream: bool = True

    def messages(self, index: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}]

    def body(self, index: int) -> dict:
        """The OpenAI request body; streams ask for usage so tokens are counted, never characters."""
        body: dict = {
            "model": self.model,
            "messages": self.messages(index),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": self.stream,
        }
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body
