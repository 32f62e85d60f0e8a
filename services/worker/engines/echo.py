"""`echo` on legacy completions: the prompt comes back first, as one chunk of zero tokens.

OpenAI puts the prompt at the head of `choices[].text` (a stream sends it in its first chunk) and, with
`logprobs`, the prompt's tokens at the head of the logprobs lists, the first with null values because
nothing came before it. One chunk carries all of that, so the API's events, bodies and chunks need no
case of their own: `text_offset` counts from the prompt's first character, as OpenAI's does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from services.worker.engines.base import GenerationItem, GenerationRequest, TokenChunk


def first_entry(token: str, raw: bytes) -> dict:
    """The prompt's first token: OpenAI scores it with null (and null alternatives)."""
    return {"token": token, "logprob": None, "bytes": list(raw), "top_logprobs": None}


def chunk(prompt: str, logprobs: tuple[dict, ...] | None = None) -> TokenChunk:
    """The echoed prompt: no completion tokens (usage counts it as the prompt, where it already is)."""
    return TokenChunk(prompt, 0, logprobs=logprobs or None)


def prepend(head: TokenChunk | None, items: Iterable[GenerationItem]) -> Iterator[GenerationItem]:
    """`head` just before the engine's first item, not before it starts: an error the engine raises first
    (a prompt over the context, a refused parameter) stays the HTTP status, and time to first token is
    still the time to the first generated token."""
    for item in items:
        if head is not None:
            yield head
            head = None
        yield item


def text_only(request: GenerationRequest, items: Iterable[GenerationItem]) -> Iterator[GenerationItem]:
    """Echo for an engine that cannot score the prompt: the text is all it needs, and it is known."""
    return prepend(chunk(request.prompt) if request.params.echo else None, items)
