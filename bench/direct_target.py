"""The same model called in-process with llama-cpp-python: the baseline the stack is measured against.

One `Llama` handles one request at a time, so calls are serialized with a (FIFO) lock, as any program
that embeds llama-cpp-python must do. Threads, context and batch size match the stack's llama.cpp engine.
It does what `create_chat_completion` does (the model's chat format from llama-cpp-python, then
`create_completion` with the format's stop string), calling the two steps itself because only
`create_completion` takes the stopping criterion that counts tokens.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench.sample import Sample, failed
from bench.workload import Workload
from services.worker.engines.llama_cpp import default_threads


class SampledTokens:
    """Counts tokens as llama-cpp-python samples them, since its stream carries no usage.

    A stopping criterion is called once per sampled token (the end-of-turn token too) and once more
    after the loop, so completion tokens = calls - 1, less one more when generation ended on EOG.
    Unlike a logits processor it costs nothing per token (no copy of the 262k-entry logits).
    """

    def __init__(self) -> None:
        self.calls = 0
        self.prompt_tokens = 0

    def __call__(self, input_ids, logits) -> bool:
        if self.calls == 0:
            self.prompt_tokens = len(input_ids)
        self.calls += 1
        return False

    def completion_tokens(self, finish_reason: str | None) -> int:
        return max(0, self.calls - 1 - (1 if finish_reason == "stop" else 0))


class FifoLock:
    """First come, first served: `threading.Lock` wakes waiters in no set order, and at 15 clients some
    waited twice as long as others, which would inflate the baseline's P95 against the stack's FIFO queue."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._issued = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._turn:
            ticket = self._issued
            self._issued += 1
            self._turn.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc: object) -> None:
        with self._turn:
            self._serving += 1
            self._turn.notify_all()


class DirectTarget:
    name = "direct"

    def __init__(self, model_path: Path, *, n_ctx: int, n_threads: int = 0, chat_format: str = "gemma") -> None:
        from llama_cpp import Llama, llama_chat_format

        threads = n_threads or default_threads()
        self.llm = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            chat_format=chat_format,
            verbose=False,
        )
        self.lock = FifoLock()
        self.chat_format = getattr(llama_chat_format, f"format_{chat_format}")

    def send(self, workload: Workload, index: int) -> Sample:
        from llama_cpp import StoppingCriteriaList

        started = time.perf_counter()
        counter = SampledTokens()
        ttft: float | None = None
        finish: str | None = None
        chat = self.chat_format(messages=workload.messages(index))
        with self.lock:
            stream = self.llm.create_completion(
                chat.prompt,
                max_tokens=workload.max_tokens,
                temperature=workload.temperature,
                stop=chat.stop,
                stream=True,
                stopping_criteria=StoppingCriteriaList([counter]),
            )
            for chunk in stream:
                choice = chunk["choices"][0]
                if ttft is None and choice["text"]:
                    ttft = time.perf_counter() - started
                finish = choice.get("finish_reason") or finish
        elapsed = time.perf_counter() - started
        if finish is None:
            return failed(elapsed, "generation ended without a finish reason")
        return Sample(True, elapsed, ttft, counter.completion_tokens(finish), counter.prompt_tokens)

    def close(self) -> None:
        self.llm.close()
