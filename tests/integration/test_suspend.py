"""Suspending OTP and the lost-device temporary list, end to end on slapd and Samba AD.

* the LDAP bind proxy (in-process, real ldap3 clients) in front of each directory: the CLI
  suspends a token or the user, a bind with the right code is refused ("suspended" in the
  audit trail), the CLI resumes, the same code binds (a refused code is not spent); a
  suspension with an end date ends by itself on the gateway's injected clock
  (``twisted.internet.task.Clock``); ``otpgate lost`` prints a temporary list that binds
  through the proxy and stops at its expiry ("expired"); ``show`` says all of it;
* the insider with a phished password writes her own state attributes back to the values
  from before the suspension (the rollback of ``test_attack_state.py``): refused by the
  directory where the state lives in the container (Samba default ACLs, self-write slapd),
  and working only where the admin opted into a user-writable layout, the measured reason
  that layout is refused by default;
* the portal's help desk over HTTP (subprocess, ``WebClient``): suspend and resume a device
  and the whole user, a lost device's temporary list shown once, protected targets
  refused, audit events; a session opened with the device before it was suspended ends;
  and one check in Chromium.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from otpgate.admin.suspend import DAY, suspend_change
from otpgate.otp.oath import hotp
from tests.browser.portal import WebClient, browser, run_portal
from tests.integration.backends import USER_PASSWORD
from tests.integration.proxyhelp import Proxy, enroll, start_proxy
from tests.integration.test_attack_state import (  # noqa: F401 - fixtures
    USER_LAYOUT,
    INSUFFICIENT_ACCESS,
    as_user,
    container,
    self_write_slapd,
    site,
    started,
    write,
)
from tests.integration.test_cli import Cli
from tests.integration.test_web_attacks import audit_lines, new_group, token_ids
from tests.integration.test_web_browser import code, enroll_directly

PW = USER_PASSWORD
BOTH = pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)


def audited(proxy: Proxy) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    proxy.gateway.audit.observers.append(events.append)
    return events


def injected_clock(proxy: Proxy) -> Clock:
    """The pipeline's clock, driven by the test (starting at the wall clock's now)."""
    clock = Clock()
    clock.advance(time.time())
    proxy.gateway.authenticator.clock = clock
    return clock


def rfc3339(stamp: float) -> str:
    return dt.datetime.fromtimestamp(int(stamp), dt.timezone(dt.timedelta(hours=2))).isoformat()


# -- the LDAP proxy and the CLI ---------------------------------------------------------------


@BOTH
@pytest_twisted.ensureDeferred
async def test_suspend_resume_through_the_proxy_and_the_cli(backend, tmp_path, capsys):
    proxy = await start_proxy(backend, tmp_path)
    cli = Cli(backend, tmp_path, capsys)
    try:
        name, dn = backend.new_user("susp")
        key = await enroll(proxy, name)
        events = audited(proxy)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
        [token] = token_ids(backend, name)
        out = cli("suspend", name, "--token", token)
        assert f"token {token} suspended since" in out and "until resumed" in out
        for _ in range(proxy.gateway.config.lockout.max_failures + 1):
            assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (False, 49)
        assert "suspended" in events[-1]["reason"] and events[-1]["outcome"] == "reject"
        shown = cli.json("show", name)
        assert shown["tokens"][0]["suspended"]["until"] is None and shown["failures"] == 0
        assert "suspended" in cli("show", name)
        cli("resume", name, "--token", token)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (True, 0)  # not spent, no lock
        # All of the user's OTP: refused before the password; resume with the user.
        cli("suspend", name)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 2)) == (False, 49)
        assert "OTP suspended for the user" in events[-1]["reason"]
        assert "all OTP suspended since" in cli("show", name)
        cli("resume", name, "--token", token, code=1)
        assert "resume the user" in cli.err
        cli("resume", name)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 2)) == (True, 0)
        cli("resume", name, code=1)  # nothing left to resume: one clear line, exit 1
        cli("suspend", name, "--days", "0", code=2)
        cli("suspend", name, "--until", "2030-01-01T00:00:00", code=2)  # no offset
    finally:
        await proxy.stop()


@BOTH
@pytest_twisted.ensureDeferred
async def test_a_suspension_with_an_end_date_ends_by_itself(backend, tmp_path, capsys):
    proxy = await start_proxy(backend, tmp_path)
    cli = Cli(backend, tmp_path, capsys)
    try:
        name, dn = backend.new_user("suspend")
        key = await enroll(proxy, name)
        clock = injected_clock(proxy)
        until = rfc3339(time.time() + 3600)
        doc = cli.json("suspend", name, "--until", until)
        assert doc["until"] == int(dt.datetime.fromisoformat(until).timestamp())
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
        clock.advance(3000)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
        clock.advance(700)  # past the end date: nobody resumed it
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
    finally:
        await proxy.stop()


@BOTH
@pytest_twisted.ensureDeferred
async def test_lost_device_temporary_list_through_the_proxy(backend, tmp_path, capsys):
    proxy = await start_proxy(backend, tmp_path)
    cli = Cli(backend, tmp_path, capsys)
    try:
        name, dn = backend.new_user("lost")
        key = await enroll(proxy, name)
        [lost] = token_ids(backend, name)
        clock = injected_clock(proxy)
        events = audited(proxy)
        doc = cli.json("lost", name, "--days", "2")
        assert doc["suspended"] == lost and len(doc["codes"]) == 10
        codes = doc["codes"]
        assert await proxy.ldap3_bind(dn, PW + codes[0]) == (True, 0)
        assert await proxy.ldap3_bind(dn, PW + codes[0]) == (False, 49)  # single use
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
        assert "suspended" in events[-1]["reason"]
        text = cli("show", name)
        assert f"{lost}: suspended since" in text and "until resumed" in text
        assert "temporary list, works until" in text
        clock.advance(2 * DAY)
        assert await proxy.ldap3_bind(dn, PW + codes[1]) == (False, 49)
        assert "expired" in events[-1]["reason"]
        cli("resume", name, "--token", lost)  # the device is back
        assert await proxy.ldap3_bind(dn, PW + codes[2]) == (False, 49)
        assert "expired" in events[-1]["reason"] and "temporary list" in events[-1]["reason"]
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
        cli("lost", name, "--days", "91", code=2)
    finally:
        await proxy.stop()


# -- the insider: her own state attributes written back ----------------------------------------


async def _suspended(proxy: Proxy, name: str) -> None:
    gw = proxy.gateway
    user = await gw.store.resolve(name, fresh=True)
    now = time.time()
    await gw.store.update(user, lambda s: suspend_change(s, None, 0, now))


@pytest_twisted.ensureDeferred
async def test_a_user_cannot_roll_her_suspension_back(site, tmp_path):
    """Default layout of the site (the state container): she saves her use state before the
    help desk suspends her OTP and writes the saved values back, on the state entry (refused:
    50) and on her own entry (allowed, and irrelevant); still refused, as "suspended"."""
    proxy = await started(site, tmp_path, container(site))
    try:
        name, dn = site.new_user("unsusp")
        key = await enroll(proxy, name)
        config = proxy.gateway.config
        used = config.directory.used.spec.name
        tokens = config.directory.tokens.spec.name
        holder = site.state_holder(dn, config)
        saved = {a: site.state_values(dn, a, config) for a in (used, tokens)}
        assert all(saved.values())
        await _suspended(proxy, name)
        events = audited(proxy)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
        attacker = as_user(site, dn)
        try:
            for attribute, values in saved.items():
                assert write(attacker, holder, attribute, values) == INSUFFICIENT_ACCESS
                assert write(attacker, dn, attribute, values) == 0  # her own entry: unused
        finally:
            attacker.unbind()
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
        assert "suspended" in events[-1]["reason"]
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_where_users_may_write_their_state_a_rollback_lifts_a_suspension(site, tmp_path):
    """The same attack where the admin opted into keeping state in the users' own, user-
    writable entries (``allow_self_writable_state``): the genuine old ciphertext lifts the
    suspension. This is the measured reason AD needs the container and OpenLDAP's access
    rules are proven before any OTP write, not a property to rely on. A forged plain use
    state without the suspension is refused in any layout (not an authenticated value)."""
    proxy = await started(site, tmp_path, USER_LAYOUT)
    try:
        name, dn = site.new_user("lift")
        key = await enroll(proxy, name)
        used = proxy.gateway.config.directory.used.spec.name
        saved = site.raw_values(dn, used)
        await _suspended(proxy, name)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
        attacker = as_user(site, dn)
        try:
            assert write(attacker, dn, used, [b'{"u":{},"v":1}']) == 0  # forged: no effect
        finally:
            attacker.unbind()
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
        attacker = as_user(site, dn)
        try:
            assert write(attacker, dn, used, saved) == 0
        finally:
            attacker.unbind()
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)  # lifted
    finally:
        await proxy.stop()


# -- the help desk over HTTP ------------------------------------------------------------------


def _helpdesk_portal(backend: Any, tmp_path: Path) -> tuple[str, bytes, Any]:
    desk, desk_dn = backend.new_user("hdsusp")
    desk_key = enroll_directly(backend, desk)
    group = new_group(backend, [desk_dn])
    return desk, desk_key, run_portal(backend, tmp_path, {"helpdesk_groups": [group]})


def _sign_in(portal: Any, name: str, otp: str) -> tuple[WebClient, int]:
    client = WebClient(portal)
    return client, client.sign_in(name, PW, otp)


@BOTH
def test_helpdesk_suspend_resume_and_lost_over_http(backend: Any, tmp_path: Path) -> None:
    target, target_dn = backend.new_user("hdtarget")
    key = enroll_directly(backend, target)
    [token] = token_ids(backend, target)
    desk, desk_key, running = _helpdesk_portal(backend, tmp_path)
    with running as portal:
        # The "thief": signed in with the device before it is reported lost.
        thief, status = _sign_in(portal, target, code(key, 0))
        assert status == 303
        desk_client, status = _sign_in(portal, desk, code(desk_key))
        assert status == 303
        csrf = desk_client.csrf("/helpdesk")
        page = "/helpdesk?q=" + urllib.parse.quote(target)
        status, text = desk_client.request("GET", page)
        assert status == 200 and f'id="hd-suspend-{token}"' in text and "hd-suspend-all" in text
        status, text = desk_client.post(
            "/helpdesk/suspend", {"user": target, "token": token, "days": ""}, csrf=csrf
        )
        assert status == 200 and f"Done: suspend token {token} until resumed" in text, text[-800:]
        assert "suspended until resumed" in text and f'id="hd-resume-{token}"' in text
        # The thief's open session ends at its next request; nothing is enrolled.
        status, _text = thief.request("GET", "/me")
        assert status == 403 and not thief.cookies
        assert thief.request("POST", "/enroll", {"label": "mine"})[0] == 303
        assert token_ids(backend, target) == [token]
        # The right code of the suspended device is refused.
        assert _sign_in(portal, target, code(key, 1))[1] == 401
        assert audit_lines(portal, "'reject'", f"user='{target}'", "suspended")
        status, text = desk_client.post(
            "/helpdesk/resume", {"user": target, "token": token}, csrf=csrf
        )
        assert status == 200 and f"Done: resume token {token}" in text
        assert _sign_in(portal, target, code(key, 1))[1] == 303
        # All of the user's OTP, for some days.
        status, text = desk_client.post(
            "/helpdesk/suspend", {"user": target, "days": "2"}, csrf=csrf
        )
        assert status == 200 and "Done: suspend all OTP until" in text
        assert 'id="hd-resume-all"' in text
        assert desk_client.post("/helpdesk/resume", {"user": target}, csrf=csrf)[0] == 200
        # Lost: the device suspended until resumed, a temporary list shown once.
        status, text = desk_client.post(
            "/helpdesk/lost", {"user": target, "token": token, "days": "1"}, csrf=csrf
        )
        assert status == 200 and 'id="lost-notice"' in text, text[-800:]
        codes = re.findall(r"<li>(\d{4} \d{4})</li>", text)
        assert len(codes) == 10
        assert _sign_in(portal, target, codes[0])[1] == 303
        assert _sign_in(portal, target, code(key, 1))[1] == 401
        status, text = desk_client.request("GET", page)
        assert "temporary list, works until" in text and "suspended until resumed" in text
        # Bad input and protected targets.
        status, text = desk_client.post(
            "/helpdesk/lost", {"user": target, "token": token, "days": "365"}, csrf=csrf
        )
        assert status == 200 and "1 to 90" in text
        for action in ("suspend", "lost"):
            status, text = desk_client.post(
                f"/helpdesk/{action}", {"user": desk, "days": "1"}, csrf=csrf
            )
            assert status == 403 and 'id="codes"' not in text
    for event in ("'helpdesk-suspend'", "'helpdesk-resume'", "'helpdesk-lost'"):
        assert audit_lines(portal, event, f"user='{target}'"), event
    assert audit_lines(portal, "'refused'", "session ended: token")
    assert len(audit_lines(portal, "'refused'", f"user='{desk}'")) == 2
    assert codes[1].replace(" ", "") not in portal.audit.read_text()


def test_helpdesk_suspend_in_a_browser(slapd: Any, tmp_path: Path, request: Any) -> None:
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path)
    target, _dn = backend.new_user("brsusp")
    enroll_directly(backend, target)
    [token] = token_ids(backend, target)
    desk, desk_key, running = _helpdesk_portal(backend, tmp_path)
    with running as portal, browser(tmp_path) as page:
        page.goto(portal.url + "/signin")
        page.fill("#username", desk)
        page.fill("#password", PW)
        page.fill("#otp", code(desk_key))
        page.click("#signin")
        page.goto(portal.url + "/helpdesk?q=" + urllib.parse.quote(target))
        row = page.locator(f"tr[data-token='{token}']")
        assert row.locator(".status").inner_text() == "active"
        page.fill(f"#suspend-days-{token}", "3")
        page.click(f"#hd-suspend-{token}")
        assert "Done: suspend" in page.inner_text("#notice")
        assert "suspended until" in row.locator(".status").inner_text()
        page.click(f"#hd-resume-{token}")
        assert "Done: resume" in page.inner_text("#notice")
        assert row.locator(".status").inner_text() == "active"
