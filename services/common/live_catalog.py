"""The model catalog re-read when its file changes, as the keys file is (services/keys/ring.py).

Every API process (replicas and gunicorn workers alike) stats models.yaml at most once per `check_every`
seconds and reloads it when its mtime, size or inode changed, so a model added, aliased or removed with
`python -m services.models` is resolved everywhere within about a second, without a restart or a message
between processes. A file broken on reload keeps the last good catalog and says why in one log line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from services.common.catalog import Catalog, CatalogError, Snapshot

log = logging.getLogger(__name__)


class LiveCatalog(Catalog):
    def __init__(
        self,
        path: Path,
        default: str | None = None,
        *,
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.wanted_default = default
        self.check_every = check_every
        self.clock = clock
        self._checked = clock()
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._now = Catalog.from_yaml(path, default).snapshot()  # a broken file at start: CatalogError

    @classmethod
    def or_exit(cls, path: Path, default: str | None = None) -> LiveCatalog:
        """For entry points: the catalog, or its one-line reason on stderr and exit status 2 (as catalog_or_exit)."""
        try:
            return cls(path, default)
        except CatalogError as exc:
            print(exc, file=sys.stderr)
            raise SystemExit(2) from None

    def _file_stamp(self) -> tuple[int, int, int] | None:
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
            self._now = Catalog.from_yaml(self.path, self.wanted_default).snapshot()
        except CatalogError as exc:
            log.error("keeping the previous catalog (%d models): %s", len(self._now.models), exc)
        else:
            log.info("loaded %d models from %s", len(self._now.models), self.path)
        self._stamp = stamp  # a broken file is reported once, not on every check

    def snapshot(self) -> Snapshot:
        now = self.clock()
        if now - self._checked >= self.check_every and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._refresh()
            finally:
                self._lock.release()
        return self._now
