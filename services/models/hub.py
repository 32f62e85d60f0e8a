"""Hugging Face downloads for `add`: which file a `REPO:QUANT` means, the download itself, and the checks.

huggingface_hub does the transfer (its cache under HF_HOME, HF_TOKEN, HF_ENDPOINT, its progress bar, a cut
connection resumed with a Range request); what it does not do is compare the bytes with the hash the hub lists,
so that is done here, and a file that does not match is taken out of the cache and refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class HubError(RuntimeError):
    """A download that cannot be done or cannot be trusted, said in one line."""


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int | None
    sha256: str | None  # LFS files: the hub's SHA-256 of the content
    blob_id: str | None  # the git blob id (SHA-1 of "blob <size>\\0" + content), for small non-LFS files


@dataclass(frozen=True)
class Picked:
    repo: str
    revision: str  # the commit, so every part comes from one version of the repo
    files: tuple[HubFile, ...]  # one file, or the parts of a split GGUF in order


def _explain(exc: Exception, repo: str, what: str) -> HubError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return HubError(f"{repo} is gated: accept its terms on the hub, then set HF_TOKEN to a token of that account")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"{repo}: no such repository (or it is private: set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{repo}: no such revision")
    if isinstance(exc, EntryNotFoundError):
        return HubError(f"{repo}: no file {what}")
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"{repo}: the hub answered {' '.join(str(exc).split())[:200]}")
    return HubError(f"{repo}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")


def _matches(name: str, quant: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(quant)}(?![A-Za-z0-9_])", name, re.IGNORECASE) is not None


def choose(names: list[str], quant: str | None, file: str | None) -> list[str]:
    """The file names to download for `--file` or a quantization: one GGUF, or every part of a split one."""
    if file is not None:
        found = [n for n in names if n == file]
        if not found:
            raise HubError(f"no file {file}")
        m = SPLIT.search(file)
        if m is None:
            return found
        stem = file[: m.start()]
        return sorted(n for n in names if n.startswith(stem) and SPLIT.search(n) and len(n) == len(file))
    ggufs = [n for n in names if n.lower().endswith(".gguf") and "mmproj" not in n.lower()]
    if quant is not None:
        ggufs = [n for n in ggufs if _matches(n, quant)]
    sets = sorted({SPLIT.sub(".gguf", n) for n in ggufs})
    if not sets:
        have = ", ".join(sorted({n for n in names if n.lower().endswith(".gguf")})) or "no GGUF files"
        raise HubError(f"no GGUF file for {quant or 'any quantization'} (the repo has {have})")
    if len(sets) > 1:
        raise HubError(f"{quant or 'no quantization given'}: more than one GGUF fits ({', '.join(sets)}); name one")
    return sorted(n for n in ggufs if SPLIT.sub(".gguf", n) == sets[0])


def pick(repo: str, *, quant: str | None = None, file: str | None = None, revision: str | None = None) -> Picked:
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # every hub or network failure: one line
        raise _explain(exc, repo, file or "") from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    try:
        names = choose(list(siblings), quant, file)
    except HubError as exc:
        raise HubError(f"{repo}: {exc}") from None
    files = tuple(
        HubFile(
            name=n,
            size=siblings[n].lfs.size if siblings[n].lfs else siblings[n].size,
            sha256=siblings[n].lfs.sha256 if siblings[n].lfs else None,
            blob_id=siblings[n].blob_id,
        )
        for n in names
    )
    return Picked(repo=repo, revision=info.sha or revision or "main", files=files)


def pick_repo(repo: str, *, revision: str | None = None, required: tuple[str, ...] = ("config.json",)) -> Picked:
    """Every file of a whole-repo model (MLX weights, a vLLM checkpoint) at one commit; HubError when a file
    such a model cannot do without is missing."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # every hub or network failure: one line
        raise _explain(exc, repo, "") from None
    siblings = [s for s in info.siblings or [] if not s.rfilename.startswith(".")]
    names = {s.rfilename for s in siblings}
    missing = [n for n in required if n not in names]
    if missing:
        raise HubError(f"{repo}: no {', '.join(missing)}: not a model repository these engines read")
    if not any(n.endswith(".safetensors") for n in names):
        raise HubError(f"{repo}: no .safetensors weights")
    files = tuple(
        HubFile(
            name=s.rfilename,
            size=s.lfs.size if s.lfs else s.size,
            sha256=s.lfs.sha256 if s.lfs else None,
            blob_id=s.blob_id,
        )
        for s in sorted(siblings, key=lambda s: s.rfilename)
    )
    return Picked(repo=repo, revision=info.sha or revision or "main", files=files)


def config(picked: Picked) -> dict:
    """The repo's config.json (the context length and architecture of a whole-repo model)."""
    import json

    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(picked.repo, "config.json", revision=picked.revision)).read_text())
    except Exception as exc:  # every hub or network failure, or a broken file: one line
        raise _explain(exc, picked.repo, "config.json") from None


def _digests(path: Path) -> tuple[str, str]:
    """SHA-256 of the content and its git blob id, in one read."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def check(path: Path, want: HubFile) -> str:
    """The file's SHA-256 when it is what the hub listed; HubError otherwise."""
    size = path.stat().st_size
    if want.size is not None and size != want.size:
        raise HubError(f"{want.name}: {size} bytes where the hub lists {want.size}")
    sha256, blob = _digests(path)
    if want.sha256 is not None and sha256 != want.sha256:
        raise HubError(f"{want.name}: SHA-256 {sha256} where the hub lists {want.sha256}; refused")
    if want.sha256 is None and want.blob_id is not None and blob != want.blob_id:
        raise HubError(f"{want.name}: git blob {blob} where the hub lists {want.blob_id}; refused")
    return sha256


def _forget(cached: Path) -> None:
    """Take a bad file out of huggingface_hub's cache (the blob and the snapshot link), so a retry downloads it."""
    blob = cached.resolve()
    cached.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _place(blob: Path, dest: Path) -> None:
    """The cached file under the models folder: a hard link (no second copy), a copy across filesystems."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(blob, tmp)
    except OSError:
        shutil.copyfile(blob, tmp)
    os.replace(tmp, dest)


def download(picked: Picked, models_dir: Path) -> tuple[list[Path], str]:
    """Every file of `picked` checked and placed under models_dir/hf/<repo>/; the paths and the first's SHA-256."""
    from huggingface_hub import hf_hub_download

    placed: list[Path] = []
    first_sha = ""
    for want in picked.files:
        try:
            cached = Path(hf_hub_download(picked.repo, want.name, revision=picked.revision))
        except Exception as exc:  # every hub or network failure: one line
            raise _explain(exc, picked.repo, want.name) from None
        try:
            sha = check(cached, want)
        except HubError:
            _forget(cached)
            raise
        first_sha = first_sha or sha
        dest = models_dir / "hf" / picked.repo / want.name
        _place(cached.resolve(), dest)
        placed.append(dest)
    return placed, first_sha
