"""A value loaded from a file and re-loaded when the file changes: the keys file and the model catalog.

Every API process (replicas and gunicorn workers alike) stats the file at most once per `check_every`
seconds and reloads it when its mtime, size or inode changed, so an edit by a CLI takes effect everywhere
within about a second, without a restart or a message between processes. A file broken by hand keeps the
last good value and says why in one log line (once per change, not on every check): a typo must not lock
every caller out. A broken file at start raises, so the process stops with the reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
Stamp = tuple[int, int, int] | None


class WatchedFile(Generic[T]):
    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        broken: type[Exception] | tuple[type[Exception], ...],
        *,
        what: Callable[[T], str],
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.load = load
        self.broken = broken
        self.what = what  # "12 API keys": how a value is named in the log
        self.check_every = check_every
        self.clock = clock
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._value = load(path)

    def _file_stamp(self) -> Stamp:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            self._value = self.load(self.path)
        except self.broken as exc:
            log.error("keeping the previous %s: %s", self.what(self._value), exc)
        else:
            log.info("loaded %s from %s", self.what(self._value), self.path)
        self._stamp = stamp

    def current(self) -> T:
        now = self.clock()
        if now - self._checked >= self.check_every and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._refresh()
            finally:
                self._lock.release()
        return self._value
