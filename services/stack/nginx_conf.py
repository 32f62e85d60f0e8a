"""Render nginx/nginx.conf.template for the native stack.

Compose renders the same template with the nginx image's envsubst, so placeholders are envsubst's
`${NAME}` and this renderer fails on any name it does not know rather than leave one behind.
`python -m services.stack.nginx_conf --check` renders with the current settings and runs `nginx -t`.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common.settings import ROOT, Settings, settings_or_exit
from services.stack.binaries import which
from services.stack.layout import Layout

TEMPLATE = ROOT / "nginx" / "nginx.conf.template"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
# A replica that fails once is skipped for this long; short, since a restarted replica is soon back.
MAX_FAILS = 1
FAIL_TIMEOUT_S = 5


class NginxConfigError(ValueError):
    """The settings cannot make a working nginx config; the message says which setting to change."""


def placeholders(template: str) -> set[str]:
    return set(PLACEHOLDER.findall(template))


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute every `${NAME}`; a name without a value is an error, never an empty string."""
    missing = placeholders(template) - set(values)
    if missing:
        raise NginxConfigError(f"no value for {', '.join(sorted(missing))}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def upstream_servers(addresses: Sequence[str], *, resolve: bool = False) -> str:
    """One `server` line per replica, each taken out for a while after a failed connect."""
    if not addresses:
        raise NginxConfigError("no API replica to balance: API_REPLICAS must be at least 1")
    extra = " resolve" if resolve else ""
    return "\n        ".join(
        f"server {addr} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_S}s{extra};" for addr in addresses
    )


def read_timeout(settings: Settings) -> int:
    """Whole seconds nginx waits on a replica; must outlast the API's own REQUEST_TIMEOUT."""
    if settings.nginx_read_timeout <= settings.request_timeout:
        raise NginxConfigError(
            f"NGINX_READ_TIMEOUT={settings.nginx_read_timeout:g} must be above "
            f"REQUEST_TIMEOUT={settings.request_timeout:g}, or nginx cuts off answers the API would still give"
        )
    return math.ceil(settings.nginx_read_timeout)


def replica_addresses(settings: Settings) -> list[str]:
    """API replicas of the native stack listen on loopback, on consecutive ports from API_BASE_PORT."""
    return [f"127.0.0.1:{settings.api_base_port + i}" for i in range(settings.api_replicas)]


OPEN_HOSTS = ("0.0.0.0", "::")


def listen_host(settings: Settings) -> str:
    """Where nginx listens: without API keys only on loopback, unless HOST was set explicitly."""
    if settings.api_keys_file is None and "host" not in settings.model_fields_set:
        return "127.0.0.1"
    return settings.host


def exposure_note(settings: Settings) -> str:
    """The one line `up` prints about who can reach the service."""
    host = listen_host(settings)
    if settings.api_keys_file is not None:
        return f"API keys required (API_KEYS_FILE={settings.api_keys_file}); nginx listens on {host}"
    if host in OPEN_HOSTS:
        return f"WARNING: no API keys and HOST={host}: anyone who reaches port {settings.port} can use every route"
    return f"no API keys (API_KEYS_FILE is empty): nginx listens on {host} only"


def native_values(settings: Settings, layout: Layout, *, listen: str | None = None) -> dict[str, str]:
    return {
        "NGINX_LISTEN": listen or f"{listen_host(settings)}:{settings.port}",
        "NGINX_UPSTREAM_SERVERS": upstream_servers(replica_addresses(settings)),
        "NGINX_RESOLVER": "",
        "NGINX_STATE_DIR": str(layout.nginx_dir),
        "NGINX_ERROR_LOG": "stderr",
        "NGINX_ACCESS_LOG": str(layout.log("nginx-access")),
        "NGINX_READ_TIMEOUT": str(read_timeout(settings)),
        "MAX_REQUEST_BYTES": str(settings.max_request_bytes),
        "NGINX_STATUS_LISTEN": f"127.0.0.1:{settings.nginx_status_port}",  # stub_status (stack/exporters.py)
    }


def write_native(settings: Settings, layout: Layout) -> Path:
    """Write the native stack's nginx.conf under RUN_DIR and return its path."""
    layout.nginx_dir.mkdir(parents=True, exist_ok=True)
    layout.nginx_conf.write_text(render(TEMPLATE.read_text(), native_values(settings, layout)))
    return layout.nginx_conf


def command(nginx: str, layout: Layout) -> list[str]:
    """nginx in the foreground with its own prefix, so no root and no system paths are needed."""
    return [nginx, "-p", str(layout.nginx_dir), "-c", str(layout.nginx_conf), "-e", "stderr"]


def test_config(nginx: str, layout: Layout) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a rendered config: catches what string checks cannot (unknown directives, syntax)."""
    return subprocess.run([*command(nginx, layout), "-t"], capture_output=True, text=True, check=False)


def check(settings: Settings) -> list[str]:
    """Problems with the config the current settings make; empty when nginx accepts it."""
    nginx = which("nginx")
    if nginx is None:
        return ["nginx is not installed: run `make system`"]
    with tempfile.TemporaryDirectory(prefix="nginx-check-") as tmp:
        layout = Layout(Path(tmp), Path(tmp) / "logs")
        layout.create()
        try:
            write_native(settings, layout)
        except NginxConfigError as exc:
            return [str(exc)]
        result = test_config(nginx, layout)
    return [] if result.returncode == 0 else [result.stderr.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.nginx_conf", description=__doc__)
    parser.add_argument("--check", action="store_true", help="render with current settings and run nginx -t")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    if args.check:
        problems = check(settings)
        print("\n".join(problems) or "nginx config OK", file=sys.stderr if problems else sys.stdout)
        return 1 if problems else 0
    layout = Layout(settings.run_dir, settings.log_dir)
    print(render(TEMPLATE.read_text(), native_values(settings, layout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
