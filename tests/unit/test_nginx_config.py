"""The rendered nginx config passes `nginx -t`, and the stack refuses a read timeout below REQUEST_TIMEOUT."""

from pathlib import Path

import pytest

from services.common.settings import Settings
from services.stack import nginx_conf


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    problems = nginx_conf.check(Settings())
    assert problems == []
    with pytest.raises(nginx_conf.NginxConfigError, match="NGINX_READ_TIMEOUT"):
        nginx_conf.read_timeout(Settings(request_timeout=400, nginx_read_timeout=300))
