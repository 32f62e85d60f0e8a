"""The keys the API checks requests against, re-read when the keys file changes.

Every API process (replicas and gunicorn workers alike) stats the file at most once per `check_every`
seconds and reloads it when its mtime, size or inode changed, so a key created or revoked by the CLI works
or stops everywhere within about a second, without a restart or a message between processes.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from services.keys import store
from services.keys.store import ApiKey

log = logging.getLogger(__name__)


class KeyRing:
    def __init__(self, path: Path, *, check_every: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.check_every = check_every
        self.clock = clock
        self._keys: tuple[ApiKey, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._keys = store.read(path).keys  # a broken file at start stops the process with the reason

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        """Reload on change; a file broken by hand keeps the last good keys (and says so) rather than lock all out."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            self._keys = store.read(self.path).keys
        except store.KeyFileError as exc:
            log.error("keeping the previous %d keys: %s", len(self._keys), exc)
        else:
            log.info("loaded %d API keys from %s", len(self._keys), self.path)
        self._stamp = stamp

    def keys(self) -> tuple[ApiKey, ...]:
        now = self.clock()
        if now - self._checked >= self.check_every and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._refresh()
            finally:
                self._lock.release()
        return self._keys

    def find(self, key: str) -> ApiKey | None:
        """The record whose hash matches `key`, compared in constant time against every record."""
        wanted = store.digest(key).encode()
        found = None
        for record in self.keys():
            if hmac.compare_digest(wanted, record.sha256.encode()):
                found = record
        return found
