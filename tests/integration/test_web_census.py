"""The help desk's census page against the portal on real slapd and Samba AD: ``[logging]
file`` holds a prepared audit trail (JSON lines, and a rotated ``.1.gz``) to which the
portal appends its own text lines; a help-desk member sees every account with its verdict,
each filter with its count, the suggested exemptions, and names sent by clients as text;
anyone else is refused.  A short Chromium run on slapd clicks through the filters."""

from __future__ import annotations

import gzip
import json
import re
import time
import urllib.parse
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from otpgate.census import NO_TOKEN, READY, SERVICE
from tests.browser.portal import WebClient, browser, run_portal
from tests.integration.backends import USER_PASSWORD
from tests.integration.test_web_browser import enroll_directly, new_group, shoot, sign_in
from tests.integration.test_web_inventory import desk_and_portal_setup, signed_in

SERVICES = "ou=services,dc=example,dc=org"
BACKUP = f"uid=svc-backup,{SERVICES}"
PRINT = f"uid=svc-print,{SERVICES}"
ALICE = "uid=alice,ou=people,dc=example,dc=org"
BOB = "uid=bob,ou=people,dc=example,dc=org"
EVIL = "<script>alert(1)</script>"


def _event(t: float, user: str, dn: str | None, client: str, **more: Any) -> dict[str, Any]:
    base = {"time": round(t, 3), "event": "auth", "outcome": "accept", "front_end": "ldap",
            "user": user, "dn": dn, "client": client, "token": None, "reason": "ok",
            "policy": "otp", "enrolled": False}
    return {**base, **more}


def write_trail(log: Path) -> int:
    """Three days of a rollout in report-only mode: two jobs binding on a timer from one
    host each, a person typing codes in office hours, one without a token, and a name with
    markup.  The older half in ``audit.log.1.gz``; returns the number of events."""
    start = (time.time() // 86400 - 3) * 86400
    would = {"report_only": True, "reason": "report-only: would refuse: no token enrolled",
             "channel": "apps"}
    events = []
    for i in range(3 * 24 * 6):
        events.append(_event(start + 600 * i, "svc-backup", BACKUP, "192.0.2.10", **would))
    for i in range(3 * 24 * 4):
        events.append(_event(start + 900 * i + 7, "svc-print", PRINT, "192.0.2.20", **would))
    for day in range(3):
        for n, hour in enumerate((8, 9, 12, 14, 16)):
            events.append(_event(start + day * 86400 + hour * 3600 + n * 97, "alice", ALICE,
                                 f"198.51.100.{day * 5 + n}", token="t-alice", enrolled=True,
                                 front_end="radius", reason="code ok"))
        for hour in (10, 15):
            events.append(_event(start + day * 86400 + hour * 3600, "bob", BOB,
                                 f"203.0.113.{day}", **would))
    events.append(_event(start + 3600, EVIL, None, "<img src=x onerror=alert(2)>",
                         outcome="accept", reason="no such user"))
    events.sort(key=lambda e: e["time"])
    lines = [json.dumps(e) + "\n" for e in events]
    half = len(lines) // 2
    with gzip.open(log.with_name(log.name + ".1.gz"), "wt") as rotated:
        rotated.writelines(lines[:half])
    log.write_text("".join(lines[half:]))
    return len(events)


def census(client: WebClient, only: str = "") -> str:
    """The census page, once its first scan is done (a few seconds at most)."""
    path = "/helpdesk/census" + (f"?only={only}" if only else "")
    deadline = time.monotonic() + 30
    while True:
        status, page = client.request("GET", path)
        assert status == 200, page
        if 'id="census-scanning"' not in page:
            return page
        assert time.monotonic() < deadline, page
        time.sleep(0.5)


def rows(page: str) -> dict[str, str]:
    """account -> verdict, in the page's order."""
    found = re.findall(r'<tr data-account="([^"]*)" data-verdict="([^"]*)"', page)
    return {unescape(a): unescape(v) for a, v in found}


def count(page: str, key: str) -> int:
    found = re.search(rf'id="filter-{key}"[^>]*>[^<]*<span class="count">\((\d+)\)', page)
    assert found is not None, key
    return int(found.group(1))


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_the_census_over_http_with_each_filter_and_refused_to_others(
    backend: Any, tmp_path: Path
) -> None:
    desk, desk_dn, key, group, _inv = desk_and_portal_setup(backend)
    plain, _plain_dn = backend.new_user("plain")
    plain_key = enroll_directly(backend, plain)
    written = write_trail(tmp_path / "audit.log")  # run_portal's [logging] file
    with run_portal(backend, tmp_path, {"helpdesk_groups": [group]}) as portal:
        assert WebClient(portal).request("GET", "/helpdesk/census")[0] == 303  # sign in first
        outsider = signed_in(portal, plain, plain_key)
        status, page = outsider.request("GET", "/helpdesk/census")
        assert status == 403 and "Help desk only" in page and "svc-backup" not in page
        client = signed_in(portal, desk, key)
        status, helpdesk = client.request("GET", "/helpdesk")
        assert 'id="nav-census" href="/helpdesk/census"' in helpdesk
        page = census(client)
        found = rows(page)
        assert found[BACKUP] == SERVICE and found[PRINT] == SERVICE
        assert found[ALICE] == READY and found[BOB] == NO_TOKEN and found[EVIL] == NO_TOKEN
        # The portal's own sign-ins, text lines appended to the JSON file, are read too.
        assert desk_dn.lower() in (a.lower() for a in found)
        assert list(found)[:2] == [BACKUP, PRINT]  # services first, busiest first
        source = re.search(r'<p id="census-source">(\d+) audit events from 2 file\(s\)', page)
        assert source is not None and int(source.group(1)) >= written, page[:2000]
        assert "audit.log.1.gz, audit.log" in page
        # Names and addresses sent by clients are text.
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x" in page
        # The suggestion: both jobs as one pattern, scoped to their two addresses.
        block = unescape(re.search(r'<pre id="census-suggestion">(.*?)</pre>', page, re.S)[1])
        assert f'pattern = "uid=svc-*,{SERVICES}"' in block
        assert "192.0.2.10/32" in block and "192.0.2.20/32" in block and "alice" not in block
        assert count(page, "all") == len(found)
        # Each filter: its rows, its count, the same in every view.
        expected = {
            "service": {BACKUP, PRINT},
            "no-token": {BACKUP, PRINT, BOB, EVIL},
            "would-refuse": {BACKUP, PRINT, BOB},
        }
        for only, accounts in expected.items():
            view = census(client, only)
            shown = set(rows(view))
            assert accounts <= shown and ALICE not in shown, (only, shown)
            if only == "service":
                assert shown == accounts and 'id="census-suggestion"' in view
            else:
                assert 'id="census-suggestion"' not in view
            assert count(view, only) == len(shown) == count(page, only)
            assert f'id="filter-{only}" href="/helpdesk/census?only={only}" aria-current' in view
        status, page = client.request("GET", "/helpdesk/census?only=" +
                                      urllib.parse.quote('"><script>'))
        assert status == 200 and 'id="filter-all" href="/helpdesk/census" aria-current' in page
        status, page = outsider.request("GET", "/helpdesk/census?only=service")
        assert status == 403
    audit = portal.audit.read_text()
    assert "looked at the census (service)" in audit
    assert "help-desk page without help-desk rights" in audit


def test_the_census_in_the_browser(slapd: Any, tmp_path: Path, request: Any) -> None:
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path)
    desk, _dn, key, group, _inv = desk_and_portal_setup(backend)
    write_trail(tmp_path / "audit.log")
    dialogs: list[str] = []
    with run_portal(backend, tmp_path, {"helpdesk_groups": [group]}) as portal, \
            browser(tmp_path) as page:
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        sign_in(page, portal.url, desk, USER_PASSWORD, enroll_code(key))
        page.click("#nav-census")
        page.wait_for_selector("#census")  # after "scanning…", if it shows, reloads itself
        assert page.locator("#census tr[data-account]").count() >= 5
        assert EVIL in page.inner_text("#census")  # shown as text, never run
        shoot(page, backend, "census")
        page.click("#filter-service")
        assert page.url.endswith("/helpdesk/census?only=service")
        accounts = page.locator("#census tr[data-account]")
        assert [accounts.nth(i).get_attribute("data-account") for i in range(2)] == [BACKUP, PRINT]
        assert accounts.count() == 2
        assert f'pattern = "uid=svc-*,{SERVICES}"' in page.inner_text("#census-suggestion")
        page.click("#filter-no-token")
        assert page.locator(f"#census tr[data-account='{BOB}']").count() == 1
        page.click("#filter-all")
        assert page.locator("#census tr[data-account]").count() >= 5
    assert dialogs == []


def enroll_code(key: bytes) -> str:
    from otpgate.otp.oath import totp

    return totp(key, time.time())
