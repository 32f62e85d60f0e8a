"""The model catalog re-read when its file changes, as the keys file is (services/keys/ring.py).

The file is watched by services/common/watched_file.py: a model added, aliased or removed with
`python -m services.models` resolves in every API process within about a second, and a file broken on
reload keeps the last good catalog and says why in one log line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from services.common.catalog import Catalog, CatalogError, Snapshot
from services.common.watched_file import WatchedFile


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
        self._file = WatchedFile(
            path,
            lambda p: Catalog.from_yaml(p, default).snapshot(),  # a broken file at start: CatalogError
            CatalogError,
            what=lambda snapshot: f"catalog ({len(snapshot.models)} models)",
            check_every=check_every,
            clock=clock,
        )

    @classmethod
    def or_exit(cls, path: Path, default: str | None = None) -> LiveCatalog:
        """For entry points: the catalog, or its one-line reason on stderr and exit status 2 (as catalog_or_exit)."""
        try:
            return cls(path, default)
        except CatalogError as exc:
            print(exc, file=sys.stderr)
            raise SystemExit(2) from None

    def snapshot(self) -> Snapshot:
        return self._file.current()
