"""llama.cpp's C++ llama-server on the real Gemma GGUF, fronted by OpenAIHTTPEngine over loopback."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.ports import free_port
from services.common.settings import Settings
from services.worker.engines.base import Engine
from services.worker.engines.llama_server_process import LlamaServerCommand, LlamaServerMissing, find_binary
from services.worker.engines.openai_http import OpenAIHTTPEngine
from tests.support.procs import running, wait_until

SLOTS = 4
SLOT_CONTEXT = 1024


def binary_or_skip() -> Path:
    """The one reason to skip: no llama-server here (`make test` installs the `llama-server` extra)."""
    try:
        return find_binary()
    except LlamaServerMissing as exc:
        pytest.skip(str(exc))


@contextlib.contextmanager
def llama_server(
    gemma_path: Path, workdir: Path, *, slots: int = SLOTS, threads: int = 2
) -> Iterator[tuple[LlamaServerCommand, subprocess.Popen]]:
    """A llama-server on a free loopback port, ready (/health 200) until the block ends; stopped by PID."""
    cmd = LlamaServerCommand(
        gemma_path,
        free_port(),
        slots=slots,
        slot_context=SLOT_CONTEXT,
        threads=threads,
        chat_template="gemma",
        alias="gemma-3-270m",
    )
    with running(cmd.argv(binary_or_skip()), log=workdir / f"llama-server-{cmd.port}.log") as proc:
        wait_until(lambda: httpx.get(f"{cmd.url}/health", timeout=2).status_code == 200, 60, "llama-server", proc)
        yield cmd, proc


READ_TICK = Settings.model_fields["stream_read_tick_ms"].default / 1000
"""The worker's default: engines under test read a flowing stream in ticks, as in production."""


def engine_for(
    cmd: LlamaServerCommand, *, concurrency: int = SLOTS, timeout: float = 60, read_tick: float = READ_TICK
) -> OpenAIHTTPEngine:
    return OpenAIHTTPEngine(
        cmd.url,
        name="llama_server",
        concurrency=concurrency,
        context=SLOT_CONTEXT,
        timeout=timeout,
        read_tick=read_tick,
    )


@contextlib.contextmanager
def make_engine(gemma_path: Path, workdir: Path) -> Iterator[Engine]:
    with llama_server(gemma_path, workdir) as (cmd, _):
        engine = engine_for(cmd)
        engine.load()
        try:
            yield engine
        finally:
            engine.unload()
