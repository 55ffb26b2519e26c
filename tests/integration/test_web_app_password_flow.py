"""App passwords end to end: ``twistd otpgate`` (the portal and an LDAP listener in one
process) on loopback in front of slapd and Samba AD.  A user signed in with a TOTP code
creates an app password over HTTP, binds with it through the listener (``ldapwhoami``;
``ldapsearch`` on Samba, which has no Who Am I?), sees its last use on the page, revokes it
and the next bind fails at once; the CLI creates, lists, shows and revokes them; /metrics
counts the logins.  Then the same flow in Chromium (slapd): the secret shown once with its
copy button, the list with the last use, revoke."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.browser.portal import ROOT, WebClient, browser, run_portal
from tests.integration.backends import USER_PASSWORD
from tests.integration.proxyhelp import CLIENT_ENV
from tests.integration.test_web_attacks import audit_lines
from tests.integration.test_web_browser import code, enroll_directly, shoot, sign_in
from tests.servers.slapd import free_port

SECRET = re.compile(r"[a-z2-7]{4}(?:-[a-z2-7]{4}){6}")


def sections(listen: str) -> dict[str, Any]:
    return {
        "ldap_proxy": {
            "listen": [listen],
            "listener_rules": {listen: {"name": "mail", "enforce": True}},
        },
        "app_passwords": {"listeners": [listen]},
    }


def bind(backend: Any, listen: str, dn: str, secret: str) -> int:
    """A simple bind through the listener (0: accepted, 49: invalid credentials)."""
    url = f"ldap://127.0.0.1:{listen.split(':')[1]}"
    args = ["/usr/bin/ldapwhoami", "-x", "-H", url, "-D", dn, "-w", secret]
    if backend.is_ad:
        args = ["/usr/bin/ldapsearch", *args[1:], "-s", "base", "-b", "", "objectClass"]
    done = subprocess.run(args, env={**os.environ, **CLIENT_ENV}, capture_output=True,
                          timeout=30, check=False)  # fmt: skip
    return done.returncode


def cli(config: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "otpgate.cli", *args, "--config", str(config)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_create_bind_last_use_revoke_over_http_and_the_cli(backend: Any, tmp_path: Path) -> None:
    name, dn = backend.new_user("apw")
    key = enroll_directly(backend, name)
    listen = f"tcp:{free_port()}:interface=127.0.0.1"
    with run_portal(backend, tmp_path, twistd=True, **sections(listen)) as portal:
        user = WebClient(portal)
        assert user.sign_in(name, USER_PASSWORD, code(key)) == 303
        status, page = user.request("GET", "/app-passwords")
        assert status == 200 and 'id="no-apps"' in page and "LDAP: mail" in page
        # Without the CSRF token: nothing is made.
        status, _ = user.request("POST", "/app-passwords/create",
                                 {"name": "imap", "ldap-0": listen})  # fmt: skip
        assert status == 403
        status, made = user.post("/app-passwords/create", {"name": "imap", "ldap-0": listen},
                                 csrf=user.csrf("/app-passwords"))  # fmt: skip
        assert status == 200, made[:800]
        secret = SECRET.search(re.sub(r"<[^>]+>", "", made))
        assert secret is not None
        typed = secret.group(0)
        assert "not be shown again" in made
        # The password + code is not needed any more on this listener; a wrong one fails.
        assert bind(backend, listen, dn, typed) == 0
        assert bind(backend, listen, dn, typed[:-1] + ("a" if typed[-1] != "a" else "b")) == 49
        status, page = user.request("GET", "/app-passwords")
        assert typed not in page and "LDAP mail" in page and "from 127.0.0.1" in page
        ident = re.search(r'data-app="([^"]+)"', page)
        assert ident is not None
        status, page = user.post("/app-passwords/revoke", {"token": ident.group(1)},
                                 csrf=user.csrf("/app-passwords"))  # fmt: skip
        assert status == 200 and "Revoked imap." in page
        assert bind(backend, listen, dn, typed) == 49  # at once
        assert audit_lines(portal, "'app-password-create'", "created own app password")
        assert audit_lines(portal, "'app-password-revoke'", "revoked own app password")
        assert typed not in portal.audit.read_text()

        # The CLI: create (by the listener's name), list, show, revoke.
        config = tmp_path / "otpgate.toml"
        rc, out = cli(config, "app-password", name, "--name", "caldav", "--listener", "mail",
                      "--json")  # fmt: skip
        assert rc == 0, out
        doc = json.loads(out)
        assert doc["app_password"]["ldap"] == [listen] and "h" not in doc["app_password"]
        assert bind(backend, listen, dn, doc["secret"]) == 0
        rc, out = cli(config, "app-password", name, "--list")
        assert rc == 0 and "'caldav'" in out and "last used" in out and doc["secret"] not in out
        rc, out = cli(config, "show", name, "--json")
        shown = json.loads(out)["app_passwords"]
        assert rc == 0 and [a["name"] for a in shown] == ["caldav"] and "h" not in shown[0]
        rc, out = cli(config, "app-password", name, "--name", "x", "--listener", "nowhere")
        assert rc == 1 and "does not take app passwords" in out
        rc, out = cli(config, "app-password", name, "--revoke", "caldav")
        assert rc == 0 and "revoked" in out
        assert bind(backend, listen, dn, doc["secret"]) == 49
        rc, out = cli(config, "app-password", name, "--revoke", "caldav")
        assert rc == 1 and "no app password" in out

        status, metrics = user.request("GET", "/metrics")
        assert 'otpgate_app_password_logins_total{front_end="ldap",outcome="accept"} 2.0' in metrics
        assert 'otpgate_app_password_logins_total{front_end="ldap",outcome="reject"}' in metrics


@pytest.mark.parametrize("backend", ["slapd-stock"], indirect=True)
def test_app_passwords_in_chromium(backend: Any, tmp_path: Path) -> None:
    name, dn = backend.new_user("apwb")
    key = enroll_directly(backend, name)
    listen = f"tcp:{free_port()}:interface=127.0.0.1"
    with run_portal(backend, tmp_path, twistd=True, **sections(listen)) as portal, \
            browser(tmp_path) as page:  # fmt: skip
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal.url)
        sign_in(page, portal.url, name, USER_PASSWORD, code(key))
        assert page.url.endswith("/me"), page.content()
        page.click("#nav-apps")
        assert page.locator("#no-apps").count() == 1
        page.fill("#app-name", "mail on my laptop")
        page.check("#app-ldap-0")
        page.click("#app-create-button")
        secret = page.inner_text("#app-secret").strip()
        assert SECRET.fullmatch(secret), secret
        assert "not be shown again" in page.inner_text("#app-warning")
        assert page.is_visible("#app-copy")  # app.js shows it where the browser can copy
        shoot(page, backend, "app-password-created")
        page.click("#app-copy")
        page.wait_for_function("document.getElementById('app-copied').textContent.length > 0")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        # Reloading never shows it again (a resubmitted form is refused: same name).
        page.reload()
        assert page.locator("#app-secret").count() == 0 and secret not in page.content()
        page.goto(portal.url + "/app-passwords")
        assert page.locator("#app-secret").count() == 0 and secret not in page.content()
        assert bind(backend, listen, dn, secret) == 0
        page.reload()
        row = page.locator("#apps tr[data-app]")
        assert row.count() == 1 and "from 127.0.0.1" in row.first.inner_text()
        assert "LDAP mail" in row.first.inner_text()
        shoot(page, backend, "app-passwords")
        ident = row.first.get_attribute("data-app")
        page.click(f"#app-revoke-{ident}")  # the confirmation is accepted
        assert "Revoked mail on my laptop." in page.inner_text("#notice")
        assert page.locator("#no-apps").count() == 1
        assert bind(backend, listen, dn, secret) == 49
