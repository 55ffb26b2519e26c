"""``twistd otpgate`` serves the [web] portal beside the other listeners (one process)."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any


from tests.browser.portal import run_portal
from tests.integration.backends import make_backend


def test_twistd_serves_the_portal(slapd: Any, tmp_path: Path, request: Any) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    with run_portal(backend, tmp_path, twistd=True) as portal:
        page = urllib.request.urlopen(portal.url + "/signin", timeout=10).read().decode()
        assert 'id="signin"' in page
        metrics = urllib.request.urlopen(portal.url + "/metrics", timeout=10).read().decode()
        assert "otpgate_web_sessions" in metrics
