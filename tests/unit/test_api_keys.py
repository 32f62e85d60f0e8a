"""The keys file, the reloading key ring and the `python -m services.keys` CLI."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from services.common.settings import Settings
from services.keys import __main__ as cli
from services.keys import ring as ring_module
from services.keys import store
from services.keys.ring import KeyRing
from services.stack import nginx_conf
from services.stack.procfile import settings_env


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_long_random_and_only_its_sha256_is_stored(tmp_path):
    path = tmp_path / "keys.json"
    key = store.create(path, "alice")
    assert key.startswith("sk-") and len(key) >= 3 + 32
    assert key != store.create(path, "bob")
    text = path.read_text()
    assert key not in text and key[8:] not in text
    record = store.read(path).named("alice")
    assert record.sha256 == hashlib.sha256(key.encode()).hexdigest() and record.shown == key[:8]


def test_the_keys_file_is_made_as_the_umask_says_and_keeps_a_mode_chosen_for_it(tmp_path):
    """Compose's API replicas (uid 10001) read a file the host's user made: it holds digests, not keys, so it
    is made like any file (0644 under the usual umask); a mode set on purpose survives every later edit."""
    path = tmp_path / "keys.json"
    old = os.umask(0o022)
    try:
        store.create(path, "alice")
        assert os.stat(path).st_mode & 0o777 == 0o644
        path.chmod(0o600)
        store.create(path, "bob")
        store.revoke(path, "alice")
        assert os.stat(path).st_mode & 0o777 == 0o600
        os.umask(0o077)
        store.create(tmp_path / "private.json", "carol")
        assert os.stat(tmp_path / "private.json").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_names_are_unique_and_revoke_removes(tmp_path):
    path = tmp_path / "keys.json"
    store.create(path, "alice")
    with pytest.raises(store.KeyFileError, match="exists"):
        store.create(path, "alice")
    store.revoke(path, "alice")
    assert store.read(path).keys == ()
    with pytest.raises(store.KeyFileError, match="no key"):
        store.revoke(path, "alice")


def test_expiry_parses_a_date_as_its_start_in_utc():
    assert store.parse_expiry("2027-01-01") == datetime(2027, 1, 1, tzinfo=UTC)
    assert store.parse_expiry("2027-01-01T12:00:00+02:00") == datetime(2027, 1, 1, 10, tzinfo=UTC)
    with pytest.raises(store.KeyFileError):
        store.parse_expiry("next week")
    past = store.ApiKey(name="a", sha256="0" * 64, shown="sk-", expires=datetime.now(UTC) - timedelta(seconds=1))
    assert past.expired() and not past.model_copy(update={"expires": None}).expired()


def test_the_ring_finds_keys_with_a_constant_time_compare_of_every_hash(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    alice, bob = store.create(path, "alice"), store.create(path, "bob", models=("m1",), admin=True)
    compared = []
    real = ring_module.hmac.compare_digest
    monkeypatch.setattr(ring_module.hmac, "compare_digest", lambda a, b: compared.append(a) or real(a, b))
    ring = KeyRing(path)
    assert ring.find(alice).name == "alice"
    assert len(compared) == 2, "every record is compared, the match does not stop the loop"
    found = ring.find(bob)
    assert found.name == "bob" and found.admin and found.models == ("m1",)
    assert ring.find("sk-wrong") is None and ring.find("") is None


def test_the_ring_reloads_a_changed_file_at_most_once_per_interval(tmp_path):
    path = tmp_path / "keys.json"
    clock = Clock()
    ring = KeyRing(path, check_every=1.0, clock=clock)
    assert ring.keys() == ()
    key = store.create(path, "late")
    clock.now = 0.5
    assert ring.find(key) is None, "not checked again before the interval"
    clock.now = 1.5
    assert ring.find(key).name == "late"
    store.revoke(path, "late")
    clock.now = 3.0
    assert ring.find(key) is None


def test_a_file_broken_later_keeps_the_last_good_keys(tmp_path):
    path = tmp_path / "keys.json"
    key = store.create(path, "alice")
    clock = Clock()
    ring = KeyRing(path, clock=clock)
    path.write_text("{not json")
    clock.now = 5
    assert ring.find(key).name == "alice"


def test_a_file_broken_at_start_is_an_error(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "a"}]}))
    with pytest.raises(store.KeyFileError):
        KeyRing(path)


def test_cli_create_prints_the_key_once_and_list_never_shows_it(tmp_path, capsys):
    path = tmp_path / "keys.json"
    args = ["--file", str(path), "create", "team-a", "--models", "gemma-3-270m, qwen-0.5b", "--expires", "2099-01-01"]
    assert cli.main(args) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("sk-")
    assert cli.main(["--file", str(path), "create", "ops", "--admin"]) == 0
    capsys.readouterr()
    assert cli.main(["--file", str(path), "list"]) == 0
    listing = capsys.readouterr().out
    assert "team-a\t" + key[:8] + "..." in listing and "models=gemma-3-270m,qwen-0.5b" in listing
    assert "expires=2099-01-01T00:00:00+00:00" in listing and "ops" in listing and "admin" in listing
    assert key not in listing and store.digest(key) not in listing
    assert cli.main(["--file", str(path), "revoke", "team-a"]) == 0
    assert cli.main(["--file", str(path), "revoke", "team-a"]) == 1
    assert cli.main(["--file", str(path), "list"]) == 0
    assert "team-a" not in capsys.readouterr().out


def test_cli_reads_the_path_from_api_keys_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("API_KEYS_FILE", str(tmp_path / "k.json"))
    assert cli.main(["create", "x"]) == 0
    assert store.read(tmp_path / "k.json").named("x") is not None
    monkeypatch.setenv("API_KEYS_FILE", "")
    assert cli.main(["list"]) == 2


def test_without_keys_nginx_listens_on_loopback_unless_host_is_set(tmp_path):
    assert nginx_conf.listen_host(Settings()) == "127.0.0.1"
    assert "127.0.0.1 only" in nginx_conf.exposure_note(Settings())
    assert nginx_conf.listen_host(Settings(host="0.0.0.0")) == "0.0.0.0"
    assert nginx_conf.exposure_note(Settings(host="0.0.0.0")).startswith("WARNING")
    keyed = Settings(api_keys_file=tmp_path / "k.json")
    assert nginx_conf.listen_host(keyed) == "0.0.0.0" and "API keys required" in nginx_conf.exposure_note(keyed)
    assert Settings(api_keys_file="").api_keys_file is None


def test_the_keys_file_setting_passes_to_children(monkeypatch, tmp_path):
    for original in (Settings(), Settings(api_keys_file=tmp_path / "k.json")):
        for name, value in settings_env(original).items():
            monkeypatch.setenv(name, value)
        assert Settings().api_keys_file == original.api_keys_file
