"""The keys file: one JSON document of key records, each holding a hash of its key, never the key.

A key is `sk-` and 43 url-safe characters from `secrets` (256 bits), so a fast unsalted SHA-256 is enough
to store it: no dictionary or brute force reaches such a key, and a slow hash (bcrypt, scrypt) would only add
milliseconds to every request. OpenAI-style gateways (LiteLLM, GPUStack) store SHA-256 of keys the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "sk-"
SHOWN_CHARS = 8
"""How much of a key `list` shows (`sk-` and 5 of its 43 random characters), so a person can tell keys apart."""


class KeyFileError(ValueError):
    """The keys file cannot be read or a change to it makes no sense; the message says why."""


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_expiry(text: str) -> datetime:
    """`2027-01-01` (the key stops working at that day's start, UTC) or a full ISO 8601 time."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise KeyFileError(f"expiry {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    if len(text) <= 10:
        when = datetime.combine(date.fromisoformat(text), datetime.min.time())
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class ApiKey(BaseModel):
    """One key's record. rpm, tpm, concurrency: its limits (None = the KEY_DEFAULT_* settings; see
    services/api/limits/key_limits.py); priority: its weight in fair share (2 gets two turns for every one of a 1)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    shown: str = Field(description="the key's first characters, to tell keys apart in `list`")
    models: tuple[str, ...] | None = Field(None, description="allowed model ids or aliases; None = all")
    expires: datetime | None = None
    admin: bool = False
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    concurrency: int | None = Field(None, ge=1)
    priority: int = Field(1, ge=1, le=100)
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires


class KeyFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    keys: tuple[ApiKey, ...] = ()

    def named(self, name: str) -> ApiKey | None:
        return next((k for k in self.keys if k.name == name), None)


def read(path: Path) -> KeyFile:
    """The keys in `path`; a missing file holds no keys."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return KeyFile()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return KeyFile.model_validate_json(text)
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a valid keys file: {exc}") from None


def file_mode(path: Path) -> int:
    """An existing file's mode, kept across edits (a chmod made on purpose stays); else 0644 less the umask.

    The file holds digests, never keys, so it is made like any other file: compose's API replicas run as
    uid 10001, not as the user who runs this CLI on the host, and read it through the mounted directory.
    A umask of 077, or a chmod 600, keeps it to its owner (then compose's API cannot read it: README)."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0o022)  # the only way to read it; this CLI is single-threaded
    os.umask(umask)
    return 0o644 & ~umask


def write(path: Path, keys: KeyFile) -> None:
    """Replace the file atomically (a reader sees the old or the new one, never half), with `file_mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(keys.model_dump(mode="json"), out, indent=2)
            out.write("\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def editing(path: Path) -> Iterator[list[ApiKey]]:
    """Read, let the caller change the list, write back; a lock file keeps two CLI runs from losing an edit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = list(read(path).keys)
        yield keys
        write(path, KeyFile(keys=tuple(keys)))


def create(
    path: Path,
    name: str,
    *,
    models: tuple[str, ...] | None = None,
    expires: datetime | None = None,
    admin: bool = False,
    **limits: int | None,
) -> str:
    """Add a key named `name` and return the key itself, which is stored nowhere. `limits`: rpm, tpm,
    concurrency, priority (None leaves the default)."""
    key = new_key()
    with editing(path) as keys:
        if any(k.name == name for k in keys):
            raise KeyFileError(f"a key named {name!r} exists; revoke it first or pick another name")
        given = {field: value for field, value in limits.items() if value is not None}
        record = ApiKey(
            name=name,
            sha256=digest(key),
            shown=key[:SHOWN_CHARS],
            models=models,
            expires=expires,
            admin=admin,
            **given,
        )
        keys.append(record)
    return key


LIMIT_FIELDS = ("rpm", "tpm", "concurrency", "priority")


def set_limits(path: Path, name: str, **limits: int | None) -> ApiKey:
    """Change a key's limits in place (0 clears rpm, tpm or concurrency back to the defaults); its key stays."""
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise KeyFileError(f"not a limit: {', '.join(sorted(unknown))}")
    with editing(path) as keys:
        index = next((i for i, k in enumerate(keys) if k.name == name), None)
        if index is None:
            raise KeyFileError(f"no key is named {name!r}")
        update = {f: (None if v == 0 and f != "priority" else v) for f, v in limits.items() if v is not None}
        record = ApiKey.model_validate({**keys[index].model_dump(), **update})
        keys[index] = record
    return record


def revoke(path: Path, name: str) -> None:
    with editing(path) as keys:
        if not any(k.name == name for k in keys):
            raise KeyFileError(f"no key is named {name!r}")
        keys[:] = [k for k in keys if k.name != name]
