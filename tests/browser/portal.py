"""A portal subprocess on loopback in front of a test directory, and a Playwright browser."""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import make_server_tls
from tests.servers.slapd import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def toml_key(key: str) -> str:
    """A bare key, or a quoted one (a listen string as a key of ``listener_rules``)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """TOML basic strings, numbers, booleans and arrays look like JSON; tables are inline."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, section in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in section.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class PortalProcess:
    url: str
    process: subprocess.Popen[str]
    log: Path
    audit: Path
    ssl_context: ssl.SSLContext | None = None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@contextmanager
def run_portal(backend: Any, tmp: Path, web: dict[str, Any] | None = None, https: bool = False,
               twistd: bool = False, **sections: Any) -> Iterator[PortalProcess]:
    """The portal on a free loopback port: our entry point, or ``twistd otpgate`` itself."""
    port = free_port()
    audit = tmp / "audit.log"
    directory = backend.directory_section(**sections.pop("directory", {}))
    listener: dict[str, Any] = {"listen": [f"tcp:{port}:interface=127.0.0.1"]}
    context = None
    if https:
        tls = make_server_tls(tmp / "web-tls")
        listener = {"listen": [f"ssl:{port}:interface=127.0.0.1"],
                    "cert_file": str(tls.cert_file), "key_file": str(tls.key_file)}
        context = ssl.create_default_context(cafile=str(tls.ca_file))
    doc = {
        "directory": directory,
        "vault": {"keyring": str(backend.keyring)},
        "logging": {"file": str(audit), "flush_seconds": 0},
        "web": {**listener, "metrics_networks": ["127.0.0.1/32"], **(web or {})},
        **sections,
    }
    config = write_config(tmp / "otpgate.toml", doc)
    log = tmp / "portal.log"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "otpgate",
             "--config", str(config)]
            if twistd
            else [sys.executable, "-m", "tests.browser.run_portal", str(config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    scheme = "https" if https else "http"
    portal = PortalProcess(f"{scheme}://127.0.0.1:{port}", process, log, audit, context)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"portal exited {process.returncode}: {log.read_text()[-4000:]}")
            try:
                urllib.request.urlopen(portal.url + "/signin", timeout=2, context=context).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"portal not answering: {log.read_text()[-4000:]}") from None
                time.sleep(0.2)
        yield portal
    finally:
        portal.stop()


@contextmanager
def browser(tmp: Path, ignore_https_errors: bool = False) -> Iterator[Any]:
    """A fresh headless Debian chromium (never a downloaded browser) and one page."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1100, "height": 900},
            ignore_https_errors=ignore_https_errors,
        )
        try:
            page = context.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            yield page
        finally:
            context.close()


class WebClient:
    """A small HTTP client for attack tests: its own cookie jar, a chosen loopback source
    address (so one machine can be many clients, or a "proxy"), extra headers, no redirects."""

    def __init__(self, portal: PortalProcess, source: str = "127.0.0.1",
                 headers: dict[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(portal.url)
        self.portal = portal
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.source = source
        self.headers = dict(headers or {})
        self.cookies: dict[str, str] = {}
        self.last_headers: Any = None
        self.last_body = b""

    def request(self, method: str, path: str, fields: dict[str, str] | bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str]:
        if self.https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=30, source_address=(self.source, 0),
                context=self.portal.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30,
                                              source_address=(self.source, 0))
        send = {**self.headers, **(headers or {})}
        if self.cookies:
            send["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body: Any = None
        if isinstance(fields, dict):
            body = urllib.parse.urlencode(fields)
            send["Content-Type"] = "application/x-www-form-urlencoded"
        if isinstance(fields, bytes):  # an encoded body of its own (multipart)
            body = fields
        try:
            conn.request(method, path, body, send)
            reply = conn.getresponse()
            self.last_body = reply.read()
            text = self.last_body.decode("utf-8", "replace")
        finally:
            conn.close()
        self.last_headers = reply.headers
        for cookie in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in cookie or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return reply.status, text

    def sign_in(self, name: str, password: str, otp: str = "") -> int:
        status, _text = self.request(
            "POST", "/signin", {"username": name, "password": password, "otp": otp})
        return status

    def csrf(self, page: str = "/me") -> str:
        status, text = self.request("GET", page)
        found = re.search(r'name="csrf" value="([^"]+)"', text)
        if status != 200 or found is None:
            raise AssertionError(f"no CSRF token on {page} ({status}): {text[:500]}")
        return found.group(1)

    def post(self, path: str, fields: dict[str, str] | None = None,
             csrf: str | None = None) -> tuple[int, str]:
        token = csrf if csrf is not None else self.csrf()
        return self.request("POST", path, {"csrf": token, **(fields or {})})

    def upload(self, path: str, fields: dict[str, str], name: str, filename: str,
               data: bytes) -> tuple[int, str]:
        """A multipart/form-data POST, as a browser sends a form with a file."""
        boundary = "----otpgate" + os.urandom(8).hex()
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data + b"\r\n"
        )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})
