"""A real headless Chromium (Debian's package) driven by Playwright, allowed to load loopback URLs only.

Playwright's own browser download is never used: `executable_path` points at the system Chromium, which
`make test` installs; without it the test fails saying so.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "chromium is not installed: `apt-get install -y --no-install-recommends chromium` (make test installs it)"
        )
    return path


def _loopback_only(route) -> None:
    """Anything off this machine is aborted, so the page can only show what the stack serves."""
    if urlsplit(route.request.url).hostname in LOOPBACK:
        route.continue_()
    else:
        route.abort()


@contextlib.contextmanager
def browser_page(profile: Path, width: int = 1280, height: int = 640) -> Iterator:
    """A page in a fresh profile directory; the browser is closed (its processes with it) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium(),
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": width, "height": height},
        )
        try:
            context.route("**/*", _loopback_only)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
