"""Token id inputs checked against the model's vocabulary before a sidecar sees them.

llama-server reads a JSON token id into its 32-bit token type, so 2**32 + 101 became 101 and the input was
embedded as if it were another text (issue 25); an id past the vocabulary it refuses, but with a message
that names no field. The API bounds an id to int32 (its schema); whether an id is in the vocabulary only
the worker can tell, from what its sidecar says of its model (`meta.n_vocab` in llama-server's
/v1/models). A sidecar that does not say (vLLM) checks the ids itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.common.errors import InvalidRequest, clip


def vocab_size(model: Mapping[str, Any]) -> int | None:
    """The vocabulary size a /v1/models entry states, or None."""
    meta = model.get("meta")
    size = meta.get("n_vocab") if isinstance(meta, Mapping) else None
    return size if isinstance(size, int) and size > 0 else None


def check(inputs: Sequence[str | Sequence[int]], vocab: int | None) -> None:
    """A 400 naming `input` for the first token id outside 0..vocab-1 (int32 when the vocabulary is unknown)."""
    top = vocab if vocab is not None else 2**31
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            continue
        for j, token in enumerate(item):
            if not 0 <= token < top:
                where = f"input[{i}][{j}]" if len(inputs) > 1 else f"input[{j}]"
                size = f"the model's vocabulary of {vocab} tokens" if vocab is not None else "a 32-bit token id"
                raise InvalidRequest(f"{where} is the token id {clip(token)}, which is not in {size}.", param="input")
