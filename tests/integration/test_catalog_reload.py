"""A catalog change is served within about a second, without a restart (issue 27, item 2), through the real app
and Redis: a new alias resolves, a broken file keeps the last good catalog and says so once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import falcon.testing
import pytest

from services.api.app import create_app
from services.common.live_catalog import LiveCatalog
from services.common.redis_client import connect
from services.common.registry import Registry, WorkerRecord
from services.common.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def catalog_text(beta_aliases: str = "[]", extra: str = "") -> str:
    return (
        textwrap.dedent(f"""\
        default: alpha
        models:
          alpha:
            sources: {{llama_server: {{path: alpha.gguf}}}}
          beta:
            aliases: {beta_aliases}
            sources: {{llama_server: {{path: beta.gguf}}}}
        """)
        + extra
    )


def replace(path: Path, text: str) -> None:
    """As `python -m services.models` writes it: a whole new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for_status(client: falcon.testing.TestClient, route: str, status: int, within: float) -> float:
    start = time.monotonic()
    while (got := client.simulate_get(route)).status_code != status:
        assert time.monotonic() - start < within, f"{route}: still {got.status_code} {got.text} after {within} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture()
def app(redis_client, redis_url, tmp_path) -> Iterator[tuple[falcon.testing.TestClient, Path]]:
    path = tmp_path / "models.yaml"
    path.write_text(catalog_text())
    settings = Settings(redis_url=redis_url, request_timeout=1, models_file=path, default_model="alpha")
    client = connect(redis_url)
    Registry(client, ttl=60).beat(
        WorkerRecord(
            id="w-reload", host="h", pid=1, engine="llama_server", device="cpu", models=("alpha", "beta"), slots=1,
            busy=0, started_at=0,
        )
    )  # fmt: skip
    yield falcon.testing.TestClient(create_app(settings, client, LiveCatalog(path, "alpha"))), path


def test_an_alias_added_to_the_file_resolves_within_a_second_and_a_half(app):
    client, path = app
    missing = client.simulate_get("/v1/models/my-beta")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "model_not_found"
    replace(path, catalog_text("[my-beta]"))
    took = wait_for_status(client, "/v1/models/my-beta", 200, within=1.5)
    assert client.simulate_get("/v1/models/my-beta").json["id"] == "beta"
    print(f"alias served {took:.2f} s after the file changed")
    replace(path, catalog_text())  # and taken away the same way
    wait_for_status(client, "/v1/models/my-beta", 404, within=1.5)


def test_a_broken_file_keeps_the_last_good_catalog_and_says_so_once(app, caplog):
    client, path = app
    replace(path, catalog_text("[my-beta]"))
    wait_for_status(client, "/v1/models/my-beta", 200, within=1.5)
    caplog.set_level(logging.INFO, logger="services.common.live_catalog")
    replace(path, catalog_text("[my-beta]", extra="    context_length: lots\n"))
    deadline = time.monotonic() + 2.5  # two checks or more after the change
    while time.monotonic() < deadline:
        assert client.simulate_get("/v1/models/my-beta").status_code == 200
        time.sleep(0.05)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "keeping the previous catalog (2 models)" in errors[0]
    assert "model 'beta'" in errors[0] and "context_length" in errors[0], errors[0]
    replace(path, catalog_text())  # mended: served again
    wait_for_status(client, "/v1/models/my-beta", 404, within=1.5)


def test_the_api_as_gunicorn_builds_it_reloads(redis_client, redis_url, tmp_path):
    """services.api.wsgi:create() itself: the catalog it builds is the live one (Redis flushed: no worker)."""
    path = tmp_path / "models.yaml"
    path.write_text(catalog_text())
    script = textwrap.dedent(f"""\
        import os, time, falcon.testing
        from services.api.wsgi import create
        client = falcon.testing.TestClient(create())
        print("STATUS", client.simulate_get("/v1/models/my-beta").status_code)
        tmp = {str(path)!r} + ".tmp"
        open(tmp, "w").write({catalog_text("[my-beta]")!r})
        os.replace(tmp, {str(path)!r})
        time.sleep(1.2)
        print("STATUS", client.simulate_get("/v1/models/my-beta").status_code)
        """)
    env = {**os.environ, "REDIS_URL": redis_url, "MODELS_FILE": str(path), "DEFAULT_MODEL": "alpha"}
    env.pop("API_KEYS_FILE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("STATUS ")]
    assert (before, after) == ("404", "503"), done.stdout  # known now; no worker serves it in this test
