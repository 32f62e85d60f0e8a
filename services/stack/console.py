"""The native stack's console: every process's new log lines, each prefixed with the process's name.

The processes write straight to their own files in LOG_DIR (services/stack/supervise.py), so a slow or
closed terminal never blocks a process on a full pipe, and a file keeps every line whatever the console
does. This follows the files, as `tail -F` would, and prints them interleaved the way honcho did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO


class _Followed:
    """One file read from where it ended when the console started; a partial last line waits for its end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # truncated or replaced: read it again from its start
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


class Console:
    """Follows `files` (process name -> log file) in a thread of its own and prints what they gain to `out`."""

    def __init__(self, files: Mapping[str, Path], out: IO[str], interval: float = 0.25) -> None:
        self._files = {name: _Followed(path) for name, path in files.items()}
        self._out = out
        self._interval = interval
        self._width = max((len(name) for name in files), default=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="console", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Print what is left, then stop following."""
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
        self.flush()

    def flush(self) -> None:
        for name, followed in self._files.items():
            lines = followed.new_lines()
            if lines:
                stamp = time.strftime("%H:%M:%S")
                self._out.write("".join(f"{stamp} {name:<{self._width}} | {line}\n" for line in lines))
        self._out.flush()
