"""Where the native stack keeps its state: one run directory, so tests can run private stacks side by side."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Paths under one run directory (RUN_DIR); logs may live elsewhere (LOG_DIR)."""

    run_dir: Path
    log_dir: Path

    @property
    def nginx_dir(self) -> Path:
        return self.run_dir / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.nginx_dir / "nginx.conf"

    @property
    def redis_dir(self) -> Path:
        return self.run_dir / "redis"

    @property
    def redis_conf(self) -> Path:
        return self.redis_dir / "redis.conf"

    @property
    def redis_password_file(self) -> Path:
        return self.run_dir / "redis.password"

    @property
    def prometheus_dir(self) -> Path:
        return self.run_dir / "prometheus"

    @property
    def prometheus_conf(self) -> Path:
        return self.prometheus_dir / "prometheus.yml"

    @property
    def pids_file(self) -> Path:
        """Each process's current PID by name, rewritten by the launcher as they (re)start."""
        return self.run_dir / "stack.pids"

    @property
    def llama_server_key(self) -> Path:
        """The key of the worker's llama-server, for Prometheus: the worker writes it at each start."""
        return self.run_dir / "llama-server.key"

    def metrics_dir(self, replica: int) -> Path:
        """prometheus_client multiprocess files, one directory per API replica so counts never mix."""
        return self.run_dir / "metrics" / f"api-{replica}"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def create(self) -> None:
        """Make the directories, readable by their owner only: configs hold the Redis password and logs
        what clients sent. The run and log directories close everything under them, whatever its mode."""
        for path in (self.run_dir, self.log_dir, self.nginx_dir, self.prometheus_dir, self.redis_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            private(path)


def private(path: Path) -> None:
    """chmod 0700 a directory of ours; never one shared with others (sticky, like /tmp) or someone else's."""
    info = path.stat()
    if info.st_uid == os.getuid() and not info.st_mode & stat.S_ISVTX:
        path.chmod(0o700)
