"""The web portal in a real browser (Debian chromium via Playwright) against a real directory.

The portal runs as a subprocess (``tests/browser/run_portal.py``) on loopback; these tests fail,
never skip, when chromium, Playwright or the directory is missing.  Screenshots of the main
pages are written to docs/screenshots/ (with ``OTPGATE_SCREENSHOTS=1``) from the slapd run.
"""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.directory.sync import open_store
from otpgate.otp.oath import totp
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from tests.browser.portal import ROOT, browser, run_portal
from tests.integration.backends import USER_PASSWORD

SHOTS = ROOT / "docs" / "screenshots"


def shoot(page: Any, backend: Any, name: str) -> None:
    if backend.name == "slapd-stock" and os.environ.get("OTPGATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def code(key: bytes, offset_steps: int = 0) -> str:
    return totp(key, time.time() + 30 * offset_steps)


def b32(text: str) -> bytes:
    text = text.replace(" ", "")
    return base64.b32decode(text + "=" * (-len(text) % 8))


def sign_in(page: Any, url: str, name: str, password: str, otp: str = "") -> None:
    page.goto(url + "/signin")
    page.fill("#username", name)
    page.fill("#password", password)
    page.fill("#otp", otp)
    page.click("#signin")


def enroll_directly(backend: Any, name: str) -> bytes:
    """A TOTP token written with the CLI's store (what `otpgate enroll` does)."""
    config = backend.config()
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        token, secret = new_oath_token(config.otp, TokenType.TOTP, label="desk phone")
        store.update(store.resolve(name), lambda s: enroll_change(s, token, secret, 5))
    finally:
        store.directory.close()
    return secret.key


def new_group(backend: Any, members: list[str]) -> str:
    tag = f"helpdesk{int(time.time() * 1000) % 10**8}"
    if backend.is_ad:
        return str(backend.server.create_group(tag, members))
    return str(backend.server.add_group(tag, members))


def post(url: str, fields: dict[str, str]) -> int:
    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data), timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_enroll_phone_end_to_end(backend: Any, tmp_path: Path) -> None:
    name, _dn = backend.new_user("web")
    web = {"password_only_enrollment_networks": ["127.0.0.1/32"]}
    with run_portal(backend, tmp_path, web) as portal, browser(tmp_path) as page:
        page.goto(portal.url + "/")
        assert page.url.endswith("/signin")
        shoot(page, backend, "signin")
        # First enrollment: the password alone, allowed from loopback by [web] policy.
        sign_in(page, portal.url, name, USER_PASSWORD + "x")
        assert "failed" in page.inner_text("#error")
        sign_in(page, portal.url, name, USER_PASSWORD)
        assert page.url.endswith("/me"), page.content()
        assert "first" in page.inner_text("main")
        page.fill("#label", "my phone")
        page.click("#enroll")
        secret_text = page.inner_text("#secret")
        assert page.locator("#qr svg").count() == 1
        shoot(page, backend, "enroll")
        key = b32(secret_text)
        page.fill("#code", "000000" if code(key) != "000000" else "111111")
        page.click("#confirm")
        assert "not right" in page.inner_text("#error")
        confirm_code = code(key)
        page.fill("#code", confirm_code)
        page.click("#confirm")
        assert "is active" in page.inner_text("#notice")
        # The confirmation code is spent: it does not sign in.
        sign_in(page, portal.url, name, USER_PASSWORD, confirm_code)
        assert page.url.endswith("/signin") and "failed" in page.inner_text("#error")
        # With a token, the password alone no longer signs in (not even from loopback).
        sign_in(page, portal.url, name, USER_PASSWORD)
        assert "failed" in page.inner_text("#error")
        # The next code of the new token does.
        sign_in(page, portal.url, name, USER_PASSWORD, code(key, 1))
        assert page.url.endswith("/me"), page.content()
        rows = page.locator("#devices tr[data-token]")
        assert rows.count() == 1 and "my phone" in rows.first.inner_text()
        shoot(page, backend, "devices")
        page.click("#scratch")
        assert page.locator("#codes li").count() == 10
        shoot(page, backend, "scratch")
        page.goto(portal.url + "/me")
        # Revoke the scratch list (revoking the device this session signed in with would
        # end the session: docs/WEB.md).
        list_row = page.locator("#devices tr[data-token]", has_text="scratch list")
        token_id = list_row.first.get_attribute("data-token")
        page.click(f"#revoke-{token_id}")
        assert "Revoked" in page.inner_text("#notice")
        assert page.locator(f"tr[data-token='{token_id}']").count() == 0
        page.click("#signout")
        assert page.url.endswith("/signin")
        page.goto(portal.url + "/me")
        assert page.url.endswith("/signin")
    audit = portal.audit.read_text()
    for event in ("'enroll-start'", "'enroll'", "'scratch'", "'revoke'", "'signout'"):
        assert event in audit, audit
    assert secret_text.replace(" ", "") not in audit
    log = portal.log.read_text()
    assert secret_text.replace(" ", "") not in log
    for secret in (USER_PASSWORD, confirm_code):
        assert secret not in log and f"'{secret}'" not in audit


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_helpdesk_unlock_and_reset(backend: Any, tmp_path: Path) -> None:
    desk, desk_dn = backend.new_user("desk")
    user, _user_dn = backend.new_user("locked")
    desk_key = enroll_directly(backend, desk)
    enroll_directly(backend, user)
    group = new_group(backend, [desk_dn])
    web = {"helpdesk_groups": [group]}
    with run_portal(backend, tmp_path, web, lockout={"max_failures": 3}) as portal:
        for _ in range(3):
            status = post(portal.url + "/signin",
                          {"username": user, "password": USER_PASSWORD, "otp": "000000"})
            assert status == 401
        with browser(tmp_path) as page:
            # A user outside the group gets no help desk.
            sign_in(page, portal.url, desk, USER_PASSWORD, code(desk_key))
            assert page.url.endswith("/me"), page.content()
            page.goto(portal.url + "/helpdesk")
            # Search by the start of the name, then pick the user from the matches.
            page.fill("#q", user[:-1])
            page.click("#search")
            assert page.locator("#matches li").count() >= 1
            shoot(page, backend, "helpdesk-search")
            page.click(f"#matches a:text-is('{user}')")
            assert "locked until" in page.inner_text("#lock")
            shoot(page, backend, "helpdesk")
            page.click("#hd-unlock")
            assert "Done: unlock" in page.inner_text("#notice")
            assert "not locked" in page.inner_text("#lock")
            page.click("#hd-reset")
            assert "Done: reset" in page.inner_text("#notice")
            assert page.locator("#no-devices").count() == 1
            page.click("#hd-scratch")
            assert page.locator("#codes li").count() == 10
        metrics = urllib.request.urlopen(portal.url + "/metrics", timeout=10).read().decode()
    assert 'otpgate_authentications_total{front_end="web",outcome="accept"}' in metrics
    assert "otpgate_lockouts_total 1.0" in metrics
    audit = portal.audit.read_text()
    for event in ("'helpdesk-unlock'", "'helpdesk-reset'", "'helpdesk-scratch'", "'view'"):
        assert event in audit, audit


def test_plain_user_gets_no_helpdesk(slapd: Any, tmp_path: Path, request: Any) -> None:
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path)
    name, _dn = backend.new_user("nodesk")
    key = enroll_directly(backend, name)
    newcomer, _dn = backend.new_user("newcomer")
    with run_portal(backend, tmp_path, {"helpdesk_groups": ["cn=nobody,dc=example,dc=org"]}) as portal:
        # By default a user without a token cannot sign in at all (no password-only enrollment).
        fields = {"username": newcomer, "password": USER_PASSWORD, "otp": ""}
        assert post(portal.url + "/signin", fields) == 401
        with browser(tmp_path) as page:
            sign_in(page, portal.url, name, USER_PASSWORD, code(key))
            assert page.url.endswith("/me")
            assert page.locator("a[href='/helpdesk']").count() == 0
            page.goto(portal.url + "/helpdesk")
            assert "Help desk only" in page.inner_text("main")
            # The CSP forbids inline script and style; cookies are HttpOnly + SameSite=Strict.
            reply = page.request.get(portal.url + "/me")
            csp = reply.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            cookie = page.context.cookies()[0]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_helpdesk_assigns_inventory_token(backend: Any, tmp_path: Path) -> None:
    from otpgate.directory.sync import SyncInventory
    from otpgate.otp.oath import hotp
    from otpgate.tokens import Secret, Token

    inventory_dn = backend.inventory_dn()
    desk, desk_dn = backend.new_user("desk")
    user, _user_dn = backend.new_user("fob")
    desk_key = enroll_directly(backend, desk)
    group = new_group(backend, [desk_dn])
    serial = f"FOB{os.getpid()}{int(time.time()) % 100000}"
    config = backend.config({"inventory_dn": inventory_dn})
    store = open_store(config.directory, Keyring.load(backend.keyring))
    fob_key = os.urandom(20)
    try:
        SyncInventory.open(store).add(
            Token(id=os.urandom(4).hex(), type=TokenType.HOTP, created=0, serial=serial,
                  label="key fob"), Secret(fob_key))
    finally:
        store.directory.close()
    web = {"helpdesk_groups": [group]}
    with run_portal(backend, tmp_path, web, directory={"inventory_dn": inventory_dn}) as portal:
        with browser(tmp_path) as page:
            sign_in(page, portal.url, desk, USER_PASSWORD, code(desk_key))
            page.goto(portal.url + "/helpdesk?q=" + urllib.parse.quote(user))
            page.fill("#serial", serial)
            page.click("#hd-assign")
            assert f"Assigned {serial}" in page.inner_text("#notice")
            assert serial in page.inner_text("#devices")
            # The user signs in with the fob.
            page.click("#signout")
            sign_in(page, portal.url, user, USER_PASSWORD, hotp(fob_key, 0))
            assert page.url.endswith("/me"), page.content()
            assert serial in page.inner_text("#devices")
    assert "'helpdesk-assign'" in portal.audit.read_text()


def test_https_listener_cookies_and_headers(slapd: Any, tmp_path: Path, request: Any) -> None:
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path)
    name, _dn = backend.new_user("tls")
    key = enroll_directly(backend, name)
    with run_portal(backend, tmp_path, https=True) as portal:
        with urllib.request.urlopen(portal.url + "/signin", context=portal.ssl_context) as reply:
            assert reply.headers["strict-transport-security"].startswith("max-age=")
        with browser(tmp_path, ignore_https_errors=True) as page:
            sign_in(page, portal.url, name, USER_PASSWORD, code(key))
            assert page.url.endswith("/me"), page.content()
            cookies = page.context.cookies()
            assert [c["name"] for c in cookies] == ["__Host-otpgate"]
            assert cookies[0]["secure"] and cookies[0]["httpOnly"]
            assert cookies[0]["sameSite"] == "Strict" and cookies[0]["path"] == "/"
            # A form without the session's CSRF token is refused, even with the cookie.
            reply = page.request.post(portal.url + "/scratch", form={"csrf": "forged"})
            assert reply.status == 403


def test_metrics_networks_and_sign_in_rate_limit(slapd: Any, tmp_path: Path, request: Any) -> None:
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path)
    name, _dn = backend.new_user("rate")
    web = {"metrics_networks": ["10.0.0.0/8"], "sign_in_attempts_per_minute": 3}
    with run_portal(backend, tmp_path, web) as portal:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(portal.url + "/metrics", timeout=10)
        assert refused.value.code == 403
        fields = {"username": name, "password": "wrong", "otp": "123456"}
        assert [post(portal.url + "/signin", fields) for _ in range(4)] == [401, 401, 401, 429]
        # No secret in a URL: a sign-in with the fields in the query string is not read.
        assert post(portal.url + "/signin?" + urllib.parse.urlencode(fields), {}) in (401, 429)
    assert "rate limit" in portal.audit.read_text()


def test_password_only_enrollment_window(slapd: Any, tmp_path: Path, request: Any) -> None:
    """Until password_only_enrollment_until a user with no token may sign in (to enroll) with
    the password alone from anywhere; after it, not (no networks configured)."""
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path)
    name, _dn = backend.new_user("window")
    fields = {"username": name, "password": USER_PASSWORD, "otp": ""}
    for until, expected in (("2099-01-01T00:00:00Z", 200), ("2001-01-01T00:00:00+02:00", 401)):
        run = tmp_path / until[:4]
        run.mkdir()
        with run_portal(backend, run, {"password_only_enrollment_until": until}) as portal:
            # 200: signed in, redirected to /me (urllib keeps no cookie, so on to /signin)
            assert post(portal.url + "/signin", fields) == expected
            assert post(portal.url + "/signin", {**fields, "password": "wrong"}) == 401
        audit = portal.audit.read_text()
        assert ("password only, first enrollment" in audit) == (expected == 200)
