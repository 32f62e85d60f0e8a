"""The images compose/docker-compose.test.yml builds on, made where no image registry can be reached.

Two images are imported, not pulled:
- a Debian base with Python, made by `mmdebstrap` from Debian's own packages (about 35 s) and imported with
  `docker import`: PYTHON_IMAGE for our Dockerfile, and the base of the stand-ins (compose/stand-ins);
- the host's llama.cpp wheels, the wheelhouse `make` built with services/stack/build_llama.sh, as an image of
  files (LLAMA_WHEELS_IMAGE): the worker image installs them instead of compiling llama.cpp again.
Each is tagged by what it was made from, so a second run finds it and makes nothing.

`python -m tests.support.compose_images` makes both and prints the variables, to run the test stack by hand:
    eval "$(.venv/bin/python -m tests.support.compose_images)"
    docker compose -f docker-compose.yml -f compose/docker-compose.ca.yml -f compose/docker-compose.test.yml \
        up --build --wait
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
"""What the official python image offers our Dockerfile: python, venv, a CA bundle."""
MMDEBSTRAP = (
    "--variant=minbase",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # merged /usr without the usrmerge package (and Perl)
    f"--include={','.join(PACKAGES)}",
    '--aptopt=APT::Install-Recommends "false"',
    *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
)
IMPORT_CHANGES = ("ENV LANG=C.UTF-8", 'CMD ["python3"]')
STAND_IN_IMAGE = "inference-test/stand-ins:1"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""The system's standard bundle: the build trusts what this machine trusts (a proxy's CA included)."""


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def present(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0


def base_image() -> str:
    """The Debian base with Python, made once per recipe."""
    tag = f"inference-test/debian-python:{SUITE}-{_digest(MMDEBSTRAP, IMPORT_CHANGES)}"
    if present(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="mmdebstrap-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        made = subprocess.run(["mmdebstrap", *MMDEBSTRAP, SUITE, str(tar), MIRROR], capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed:\n{made.stderr[-3000:]}")
        changes = [arg for change in IMPORT_CHANGES for arg in ("--change", change)]
        subprocess.run(["docker", "import", *changes, str(tar), tag], check=True, capture_output=True)
    return tag


def wheelhouse() -> Path:
    """Where services/stack/build_llama.sh keeps its wheels, one folder per set of build flags."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "inference-service" / "wheels"


def wheels_image(house: Path | None = None) -> str:
    """An image holding the wheelhouse's files, or `scratch` where there are none (the build compiles)."""
    house = house or wheelhouse()
    files = sorted(p for p in house.glob("*/*") if p.is_file()) if house.is_dir() else []
    if not any(p.suffix == ".whl" for p in files):
        return "scratch"
    tag = f"inference-test/llama-wheels:{_digest([(str(p.relative_to(house)), p.stat().st_size) for p in files])}"
    if not present(tag):
        names = [str(p.relative_to(house)) for p in files]
        tar = subprocess.Popen(["tar", "-C", str(house), "-cf", "-", *names], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, check=True, capture_output=True)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of {house} failed")
    return tag


def environment() -> dict[str, str]:
    """The variables compose/docker-compose.test.yml and compose/docker-compose.ca.yml read."""
    base = base_image()
    return {
        "PYTHON_IMAGE": base,
        "STAND_IN_BASE_IMAGE": base,
        "STAND_IN_IMAGE": STAND_IN_IMAGE,
        "LLAMA_WHEELS_IMAGE": wheels_image(),
        "CA_BUNDLE": str(CA_BUNDLE),
    }


def main() -> int:
    for name, value in environment().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
