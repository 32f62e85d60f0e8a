"""Run the stack's processes under honcho: one console, a log file per process, all stopped together.

honcho runs each command in its own session and stops them by process group, so gunicorn's and
nginx's worker processes go with their masters; if any process exits, honcho stops the rest, so a
half-running stack never lingers. Ctrl-C or SIGTERM to the launcher does the same.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from honcho import manager as honcho_manager
from honcho.manager import Manager
from honcho.printer import Message, Printer

from services.stack.layout import Layout
from services.stack.procfile import Proc

# Seconds between SIGTERM and SIGKILL: room for a worker to finish the tokens it is generating.
STOP_GRACE_S = 20


class TeePrinter(Printer):
    """honcho's console printer that also appends each process's lines to LOG_DIR/<name>.log."""

    def __init__(self, output: IO[str], layout: Layout) -> None:
        super().__init__(output)
        self._layout = layout
        self._files: dict[str, IO[str]] = {}
        self._open = contextlib.ExitStack()

    def write(self, message: Message) -> None:
        super().write(message)
        data = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) else message.data
        name = message.name or "system"
        out = self._files.get(name)
        if out is None:
            log = Path(self._layout.log(name)).open("a", buffering=1)  # noqa: SIM115 - closed in close()
            out = self._files[name] = self._open.enter_context(log)
        out.write(f"{message.time.isoformat(timespec='milliseconds')} {data.rstrip()}\n")

    def close(self) -> None:
        self._open.close()


def run(procs: Sequence[Proc], layout: Layout, output: IO[str] = sys.stdout) -> int:
    """Block until the stack stops; the exit code is the first process's to stop (130 on Ctrl-C)."""
    honcho_manager.KILL_WAIT = STOP_GRACE_S  # honcho reads this module constant in its loop
    printer = TeePrinter(output, layout)
    manager = Manager(printer)
    for proc in procs:
        manager.add_process(proc.name, "exec " + shlex.join(proc.argv), env=dict(proc.env), cwd=str(proc.cwd))
    manager.loop()
    printer.close()
    return manager.returncode or 0
