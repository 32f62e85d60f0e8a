"""The keys the API checks requests against, re-read when the keys file changes.

The file is watched by services/common/watched_file.py: a key created or revoked by the CLI works or stops
in every API process within about a second, and a file broken by hand keeps the last good keys.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from pathlib import Path

from services.common.watched_file import WatchedFile
from services.keys import store
from services.keys.store import ApiKey


class KeyRing:
    def __init__(self, path: Path, *, check_every: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._file = WatchedFile(
            path,
            lambda p: store.read(p).keys,  # a broken file at start stops the process with the reason
            store.KeyFileError,
            what=lambda keys: f"{len(keys)} API keys",
            check_every=check_every,
            clock=clock,
        )

    def keys(self) -> tuple[ApiKey, ...]:
        return self._file.current()

    def find(self, key: str) -> ApiKey | None:
        """The record whose hash matches `key`, compared in constant time against every record."""
        wanted = store.digest(key).encode()
        found = None
        for record in self.keys():
            if hmac.compare_digest(wanted, record.sha256.encode()):
                found = record
        return found
