"""The attacker's suite: the native stack as `make up` runs it, with a keys file, attacked from outside through nginx.

`attack` starts one stack per test module (a start costs 20-40 s on 2 cores) and stops it, by PID, after the
module. A module tunes its stack with module-level names, read when the fixture starts:
- `STACK = {...}`: Settings overrides over tests/support/native_stack.E2E_SETTINGS (e.g. `{"n_ctx": 512}`);
  with `"embedding_model": "all-minilm-l6-v2"` the stack starts its embedding worker and the fixture waits for it;
- `STACK_WORKER = False`: no worker at all (authentication and paths answer before the queue).
Keys: `attack.admin` (an admin key, no limits) and `attack.user` (a user key with USER_LIMITS), both in
`attack.keys_file`; a test may add more with services.keys.store (each API process re-reads it within a second).
Each module marks itself `pytestmark = pytest.mark.e2e`. A test that kills processes (`attack.stack.kill(name)`)
leaves them dead for the rest of its module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.keys import store
from tests.conftest import GEMMA, RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import wait_until

USER_LIMITS = {"rpm": 600, "tpm": 200_000, "concurrency": 4}
"""The user key's limits: loose enough for a test's own traffic, so a 429 means a test asked for one."""
KEY_RELOAD_S = 1.05
"""Each API process re-reads the keys file at most once a second."""


@dataclass(frozen=True)
class AttackStack:
    """A running keyed stack and its two keys; `url` is nginx's, the only door an outsider has."""

    stack: NativeStack
    admin: str
    user: str

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def keys_file(self) -> Path:
        assert self.stack.settings.api_keys_file is not None
        return self.stack.settings.api_keys_file

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def serves(self, model: str) -> bool:
        """Through nginx, from the public /health."""
        return model in httpx.get(f"{self.url}/health", timeout=5).json().get("models", [])


@pytest.fixture(scope="module")
def attack(request: pytest.FixtureRequest) -> Iterator[AttackStack]:
    overrides: dict[str, object] = dict(getattr(request.module, "STACK", {}))
    worker: bool = getattr(request.module, "STACK_WORKER", True)
    if worker and not GEMMA.exists():
        pytest.fail(f"{GEMMA} is missing: run `make models` (make test does)")
    name = request.module.__name__.rsplit(".", 1)[-1]
    run_dir = RUN_DIR / f"attack-{name}-{time.strftime('%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = e2e_settings(run_dir, **{"api_keys_file": run_dir / "api-keys.json"} | overrides)
    assert settings.api_keys_file is not None
    admin = store.create(settings.api_keys_file, "attack-admin", admin=True)
    user = store.create(settings.api_keys_file, "attack-user", **USER_LIMITS)
    with native_stack(settings, worker=worker) as running:
        keyed = AttackStack(running, admin, user)
        if worker and settings.embedding_model:
            wait_until(lambda: keyed.serves(settings.embedding_model), 120, "the embedding worker",
                       running.procs.get("embedder"))  # fmt: skip
        yield keyed
