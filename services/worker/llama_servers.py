"""The llama-servers a worker runs itself: one per model it has loaded, each supervised, each on its own port.

A llama-server holds one model. A worker that loads models on request (`--on-demand`) therefore starts one for
each model it loads and stops it when the model is unloaded, instead of binding a new model id to the server it
already has (which answered with the wrong weights). Every server of one worker shares the worker's key (made at
start, in their environment, never in argv); the first free one takes LLAMA_SERVER_PORT, which the stack's
Prometheus scrapes with that key, and the others a free port each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.catalog import Catalog
from services.common.ports import free_port, port_is_free
from services.common.settings import Settings
from services.common.supervisor import Supervisor
from services.worker import sidecar
from services.worker.engines.base import EngineUnavailable
from services.worker.engines.llama_server_process import LlamaServerCommand

log = logging.getLogger(__name__)


@dataclass
class Spawned:
    command: LlamaServerCommand
    process: Supervisor


class LlamaServers:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        key: str,
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
        log_dir: Path,
        binary: str | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.key = key
        self.on_up = on_up
        self.on_down = on_down
        self.log_dir = log_dir
        self.binary = binary
        self.running: dict[str, Spawned] = {}

    def start(self, model_id: str, *, context: int, wait: float) -> LlamaServerCommand:
        """Start the model's llama-server and wait until it serves; EngineUnavailable (and nothing left
        running) when it does not within `wait` seconds."""
        cmd = sidecar.command(self.settings, self.catalog, model_id, port=self._port(), slot_context=context,
                              api_key=self.key)  # fmt: skip
        self.log_dir.mkdir(parents=True, exist_ok=True)
        own = model_id == self.catalog.resolve(self.settings.default_model)  # the others log apart
        log_path = self.log_dir / ("llama-server.log" if own else f"llama-server-{model_id}.log")
        process = sidecar.supervise(cmd, log_path=log_path, on_up=self.on_up, on_down=self.on_down,
                                    binary=self.binary)  # fmt: skip
        self.running[model_id] = Spawned(cmd, process)
        process.start()
        if not process.wait_ready(wait):
            last = process.last_exit
            self.stop(model_id)
            raise EngineUnavailable(
                f"llama-server for {model_id} did not serve within {wait:.0f} s"
                + (f" (it {last})" if last else "")
                + f"; see {log_path}"
            )
        log.info("llama-server for %s serves on port %d (pid %s)", model_id, cmd.port, process.pid)
        return cmd

    def stop(self, model_id: str) -> None:
        spawned = self.running.pop(model_id, None)
        if spawned is not None:
            spawned.process.stop()

    def stop_all(self) -> None:
        for model_id in list(self.running):
            self.stop(model_id)

    def process(self, model_id: str) -> Supervisor | None:
        spawned = self.running.get(model_id)
        return spawned.process if spawned else None

    def _port(self) -> int:
        """LLAMA_SERVER_PORT unless one of ours or another listener has it, else a free port. Checked as
        llama-server binds (SO_REUSEADDR): a plain bind fails for a minute on the TIME_WAIT sockets a killed
        worker's llama-server left there, which moved a restarted worker's server off the port Prometheus scrapes."""
        taken = {s.command.port for s in self.running.values()}
        first = self.settings.llama_server_port
        return first if first not in taken and port_is_free(first, reuse_address=True) else free_port()
