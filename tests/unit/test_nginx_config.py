"""The rendered nginx config passes `nginx -t`, and the stack refuses a read timeout below REQUEST_TIMEOUT."""

import re
from pathlib import Path

import pytest

from services.common.settings import Settings
from services.stack import nginx_conf
from services.stack.layout import Layout


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    problems = nginx_conf.check(Settings())
    assert problems == []
    with pytest.raises(nginx_conf.NginxConfigError, match="NGINX_READ_TIMEOUT"):
        nginx_conf.read_timeout(Settings(request_timeout=400, nginx_read_timeout=300))


def test_status_page_and_api_share_the_one_proxied_location(tmp_path: Path) -> None:
    """/status (the page) and /v1/system/status (its data) reach the API through `location /`: the only other
    locations are nginx's own health check and its error pages (named, or internal `/.errors/` URIs), so no new
    route needs an nginx edit; before proxying it refuses only non-canonical paths and HTTP/1.0 POSTs."""
    layout = Layout(tmp_path, tmp_path / "logs")
    conf = nginx_conf.render(nginx_conf.TEMPLATE.read_text(), nginx_conf.native_values(Settings(), layout))
    api_server = conf[: conf.index("listen " + nginx_conf.native_values(Settings(), layout)["NGINX_STATUS_LISTEN"])]
    locations = re.findall(r"^\s*location\s+([^{]+?)\s*\{", api_server, flags=re.M)
    pages = [loc for loc in locations if loc.startswith("@") or loc.startswith("= /.errors/")]
    assert [loc for loc in locations if loc not in pages] == ["= /nginx/health", "/"]
    for page in (p for p in pages if p.startswith("=")):  # never reachable from outside
        assert re.search(rf"location {re.escape(page)} \{{\s*internal;", conf), page
    proxied = conf[conf.index("location / {") : conf.index("proxy_pass http://api;")]
    assert set(re.findall(r"if \((\$\w+)", proxied)) <= {"$noncanonical", "$http10_post"}
