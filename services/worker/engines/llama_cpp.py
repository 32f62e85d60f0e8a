"""llama.cpp in-process through llama-cpp-python: one `Llama` context per slot, weights shared by mmap.

We drive `Llama.generate()` token by token (not `create_completion`) so that usage is the exact number
of sampled tokens, cancellation is checked between tokens, and stop strings never leak to the client.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import queue
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from services.common.engine_fields import GUIDED
from services.common.errors import InvalidRequest
from services.common.jobs import ChatMessage
from services.worker.engines import echo, features
from services.worker.engines.base import (
    CancelCheck,
    ContextLengthExceeded,
    Embeddings,
    EngineError,
    Finish,
    GenerationItem,
    GenerationRequest,
    TokenChunk,
    clamp_max_tokens,
)
from services.worker.engines.stops import StopMatcher

log = logging.getLogger(__name__)


def default_threads() -> int:
    """Physical cores, not logical: oversubscribed llama.cpp threads ran at 0.4x on 2 cores."""
    return max(1, (os.cpu_count() or 2) // (2 if (os.cpu_count() or 1) > 2 else 1))


def fold_system(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Gemma has no system role: its official template prepends system text to the first user turn."""
    system = "\n\n".join(m.content for m in messages if m.role in ("system", "developer"))
    turns = [{"role": m.role, "content": m.content} for m in messages if m.role not in ("system", "developer")]
    if system:
        if turns and turns[0]["role"] == "user":
            turns[0]["content"] = f"{system}\n\n{turns[0]['content']}"
        else:
            turns.insert(0, {"role": "user", "content": system})
    return turns


FEATURES = features.ALL - {"tools", "add_generation_prompt", "continue_final_message", "suffix", *GUIDED}
"""What llama-cpp-python serves here; tools are a 400 (the sidecar engine has them), and so are the template
switches (its formatter has none), fill-in-the-middle and vLLM's guided decoding; `grammar` and
`cache_prompt: false` are served."""

ECHO_BATCH = 32
"""Prompt tokens decoded at once when their logprobs are asked. llama.cpp keeps a vocabulary-sized logits
row per token that asks for one: 32 rows of Gemma's 262k vocabulary are 32 MiB, where llama-cpp-python's
own way (`Llama(logits_all=True)`, which `create_completion(echo=True, logprobs=N)` demands) keeps n_ctx
rows for every request of the context's life, 2 GiB at n_ctx 2048, and computes them all."""


def grammar_for(response_format: dict | None, grammar: str | None = None, vocab=None):
    """llama.cpp's grammar for OpenAI's response_format (its JSON grammar, or one built from the schema), or the
    client's own GBNF `grammar`, checked first: llama.cpp cannot parse it -> a 400 naming it, where handing it to
    the sampler chain would take the worker down (a NULL sampler)."""
    if grammar:
        return _checked_grammar(grammar, vocab)
    if response_format is None:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if response_format["type"] == "json_object":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    schema = response_format["json_schema"].get("schema") or {"type": "object"}
    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)


def _checked_grammar(grammar: str, vocab):
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise InvalidRequest(
            "Invalid value for 'grammar': llama.cpp could not parse it as a GBNF grammar with a 'root' rule.",
            param="grammar",
        )
    llama_cpp.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(grammar, verbose=False)


def logprob_entry(llm, token: int, piece: bytes, top: int, output: int = -1) -> dict:
    """OpenAI's logprobs entry for a token just sampled: log-softmax of the logits it was drawn from (the
    context's last output row: `generate` yields a token before it evaluates it; a prompt token's are the
    row of the token before it, `output`). llama-cpp-python keeps no copy of them without logits_all,
    which would cost a vocabulary-sized row per prompt token."""
    import llama_cpp
    import numpy as np

    row = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, output)
    logits = np.ctypeslib.as_array(row, shape=(llm.n_vocab(),)).astype(np.float64)
    logprobs = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    best = np.argpartition(-logprobs, top)[:top] if top else np.array([], dtype=int)
    best = best[np.argsort(-logprobs[best])]

    def text(i: int, raw: bytes | None = None) -> tuple[str, list[int]]:
        raw = llm.detokenize([int(i)], special=False) if raw is None else raw
        return raw.decode(errors="replace"), list(raw)

    tok, raw = text(token, piece)
    tops = []
    for i in best:
        t, b = text(i)
        tops.append({"token": t, "logprob": float(logprobs[i]), "bytes": b})
    return {"token": tok, "logprob": float(logprobs[token]), "bytes": raw, "top_logprobs": tops}


def prompt_logprobs(llm, tokens: list[int], top: int, added_bos: bool) -> tuple[dict, ...]:
    """OpenAI's echo entries for the prompt: each token scored by the logits of the position before it.

    All but the last token are decoded here, ECHO_BATCH at a time with a logits row each; the context is
    then left as `generate(reset=True)` finds a cached prefix, so it evaluates only the last token and
    samples as always. A BOS we added is not in the prompt's text, so it has no entry: the first token
    of the text is the one with null values, as OpenAI writes it.
    """
    first = 1 if added_bos else 0  # the index of the text's first token
    if first >= len(tokens):
        return ()
    head = tokens[:-1]
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    scored: list[dict] = []
    for start in range(0, len(head), ECHO_BATCH):
        part = head[start : start + ECHO_BATCH]
        llm._batch.set_batch(batch=part, n_past=start, logits_all=True)
        llm._ctx.decode(llm._batch)
        for i in range(len(part)):
            if start + i + 1 > first:
                token = tokens[start + i + 1]
                scored.append(logprob_entry(llm, token, llm.detokenize([token], special=True), top, output=i))
    llm.input_ids[: len(head)] = head
    llm.n_tokens = len(head)
    raw = llm.detokenize([tokens[first]], special=True)
    return (echo.first_entry(raw.decode(errors="replace"), raw), *scored)


class LlamaCppEngine:
    """In-process llama.cpp; `slots` contexts let that many requests run at once."""

    name = "llama_cpp"
    templates_chat = False
    calls_before_wait = False

    def __init__(
        self,
        model_path: Path,
        *,
        chat_format: str | None,
        slots: int,
        n_ctx: int,
        n_threads: int = 0,
        embedding: bool = False,
    ) -> None:
        self.model_path = model_path
        self.embedding = embedding
        """An embedding model (models.yaml kind: embedding): its contexts embed and never generate."""
        self.chat_format = chat_format
        self.slots = slots
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, default_threads() // slots)
        self._pool: queue.Queue = queue.Queue()
        self._contexts: list = []
        self._formatter = None
        self._bos_text = ""

    def load(self) -> None:
        from llama_cpp import Llama

        for _ in range(self.slots):
            llm = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                n_batch=max(512, self.n_ctx) if self.embedding else 512,  # an input is embedded in one batch
                embedding=self.embedding,
                verbose=False,
            )
            self._contexts.append(llm)
            self._pool.put(llm)
        self._formatter = self._make_formatter(self._contexts[0])
        first = self._contexts[0]
        self._bos_text = first.detokenize([first.token_bos()], special=True).decode(errors="ignore")
        log.info(
            "llama.cpp loaded %s: %d slot(s), n_ctx=%d, %d thread(s)",
            self.model_path.name,
            self.slots,
            self.n_ctx,
            self.n_threads,
        )

    def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """Normalized vectors from one slot's context, as llama-server gives them (texts only here)."""
        if not self.embedding:
            raise InvalidRequest(f"{self.model_path.name} generates text and cannot embed it.", param="model")
        if any(not isinstance(x, str) for x in inputs):
            raise InvalidRequest("Token id inputs need the llama_server engine; send texts.", param="input")
        llm = self._pool.get()
        try:
            vectors, tokens = llm.embed(list(inputs), normalize=True, truncate=False, return_count=True)
        except ValueError as exc:  # "Requested tokens (N) exceed batch size of M"
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.n_ctx} tokens; an input is longer ({exc}).",
                param="input",
            ) from exc
        finally:
            self._pool.put(llm)
        return Embeddings(vectors, tokens)

    def _make_formatter(self, llm):
        from llama_cpp import llama_chat_format

        template = llm.metadata.get("tokenizer.chat_template")
        if template and not self.chat_format:
            eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="ignore")
            bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="ignore")
            return llama_chat_format.Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        fmt = getattr(llama_chat_format, f"format_{self.chat_format or 'chatml'}", None)
        if fmt is None:
            raise EngineError(f"unknown chat format {self.chat_format!r}")
        return fmt

    def unload(self) -> None:
        for llm in self._contexts:
            llm.close()
        self._contexts.clear()
        self._pool = queue.Queue()

    def capacity(self) -> int:
        return self.slots

    def context_length(self) -> int:
        return self.n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self._contexts[0].tokenize(text.encode(), add_bos=False, special=True))

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> str:
        turns = (
            fold_system(messages)
            if self.chat_format == "gemma"
            else [{"role": m.role, "content": m.content} for m in messages]
        )
        return self._formatter(messages=turns).prompt

    def generate(self, request: GenerationRequest, cancelled: CancelCheck) -> Iterator[GenerationItem]:
        features.require(request.params, self.name, FEATURES)
        llm = self._pool.get()
        try:
            yield from self._generate(llm, request, cancelled)
        finally:
            self._pool.put(llm)

    def _generate(self, llm, request: GenerationRequest, cancelled: CancelCheck) -> Iterator[GenerationItem]:
        params = request.params
        add_bos = not (self._bos_text and request.prompt.startswith(self._bos_text))
        prompt = llm.tokenize(request.prompt.encode(), add_bos=add_bos, special=True)
        limit = clamp_max_tokens(params, len(prompt), self.n_ctx)
        llm.set_seed(params.seed if params.seed is not None else random.randint(0, 2**31 - 1))
        if params.cache_prompt is False:  # llama-server's switch: evaluate the whole prompt, reuse no cached prefix
            llm.reset()
        head = None
        if params.echo:
            scored = prompt_logprobs(llm, prompt, params.top_logprobs, add_bos) if params.logprobs else None
            head = echo.chunk(request.prompt, scored)
        yield from echo.prepend(head, self._sample(llm, request, prompt, limit, cancelled))

    def _sample(
        self, llm, request: GenerationRequest, prompt: list[int], limit: int, cancelled: CancelCheck
    ) -> Iterator[GenerationItem]:
        import llama_cpp

        params = request.params
        stops = StopMatcher(params.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        produced, pending_tokens, reason = 0, 0, "length"
        pending_lp: list[dict] | None = [] if params.logprobs else None
        tokens = llm.generate(
            prompt,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=(0 if params.temperature > 0 else 1) if params.top_k is None else max(params.top_k, 0),
            min_p=params.min_p or 0.0,
            repeat_penalty=params.repetition_penalty or 1.0,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            reset=True,
            grammar=grammar_for(params.response_format, params.grammar, llm._model.vocab),
        )
        for token in tokens:
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                reason = "stop"
                break
            produced += 1
            pending_tokens += 1
            piece = llm.detokenize([token], special=False)
            if pending_lp is not None:
                pending_lp.append(logprob_entry(llm, token, piece, params.top_logprobs))
            text = stops.feed(decoder.decode(piece))
            if text:
                yield TokenChunk(text, pending_tokens, logprobs=tuple(pending_lp) if pending_lp else None)
                pending_tokens = 0
                pending_lp = [] if pending_lp is not None else None
            if stops.stopped or cancelled():
                reason = "stop"
                break
            if produced >= limit:
                break
        tokens.close()
        tail = "" if stops.stopped else stops.flush() + decoder.decode(b"", final=True)
        if tail or pending_tokens:
            yield TokenChunk(tail, pending_tokens, logprobs=tuple(pending_lp) if pending_lp and tail else None)
        yield Finish(reason, len(prompt), produced)
