"""The PIN in the portal, over HTTP against the portal process and a real directory: a user
sets and removes her own PIN after a sign-in with a code; the help desk sets and clears a
user's PIN (CSRF, audit) and is refused for administrators; a password-only session and a
request without the CSRF token change nothing; the PIN is never in the audit trail."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from otpgate.directory.sync import open_store
from otpgate.vault import Keyring
from tests.browser.portal import WebClient, run_portal
from tests.integration.backends import USER_PASSWORD
from tests.integration.test_web_attacks import audit_lines, new_group, raw_state
from tests.integration.test_web_browser import code, enroll_directly


def stored_pin(backend: Any, name: str) -> str | None:
    config = backend.config()
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        state = store.decode(store.resolve(name))
        return None if state.pin is None else state.pin.pin
    finally:
        store.directory.close()


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_pin_self_service_and_help_desk(backend: Any, tmp_path: Path) -> None:
    me, _me_dn = backend.new_user("pinme")
    desk, desk_dn = backend.new_user("pindesk")
    admin, admin_dn = backend.new_user("pinadmin")
    newcomer, _ = backend.new_user("pinnew")
    me_key, desk_key = enroll_directly(backend, me), enroll_directly(backend, desk)
    enroll_directly(backend, admin)
    desk_group = new_group(backend, [desk_dn])
    admin_group = new_group(backend, [admin_dn])
    web = {"helpdesk_groups": [desk_group],
           "password_only_enrollment_networks": ["127.0.0.0/8"]}
    with run_portal(backend, tmp_path, web, policy={"admin_groups": [admin_group]}) as portal:
        user = WebClient(portal)
        assert user.sign_in(me, USER_PASSWORD, code(me_key)) == 303
        status, text = user.request("GET", "/me")
        assert status == 200 and 'id="pin-state">none<' in text
        # Two different entries, a PIN that is too short: refused, nothing stored.
        status, text = user.post("/pin", {"pin": "4711", "pin2": "4712"})
        assert status == 200 and "PIN not set: the two PINs differ" in text
        status, text = user.post("/pin", {"pin": "47", "pin2": "47"})
        assert "4 to 16 digits" in text
        assert stored_pin(backend, me) is None
        # Without the CSRF token: refused.
        before = raw_state(backend, me)
        status, _ = user.request("POST", "/pin", {"pin": "4711", "pin2": "4711"})
        assert status == 403 and raw_state(backend, me) == before
        status, text = user.post("/pin", {"pin": "4711", "pin2": "4711"})
        assert status == 200 and "Your PIN is set." in text and 'id="clear-pin"' in text
        assert stored_pin(backend, me) == "4711"
        status, text = user.post("/pin/clear")
        assert "You have no PIN now." in text and stored_pin(backend, me) is None
        assert audit_lines(portal, "'pin-set'", "set own PIN")
        assert audit_lines(portal, "'pin-clear'", "removed own PIN")

        # A password-only (first enrollment) session may not set a PIN.
        fresh = WebClient(portal)
        assert fresh.sign_in(newcomer, USER_PASSWORD) == 303
        assert fresh.post("/pin", {"pin": "4711", "pin2": "4711"})[0] == 403
        assert raw_state(backend, newcomer) == (None, (), ())

        # The help desk: sets and clears an ordinary user's PIN ...
        agent = WebClient(portal)
        assert agent.sign_in(desk, USER_PASSWORD, code(desk_key)) == 303
        csrf = agent.csrf("/helpdesk")
        status, text = agent.post("/helpdesk/pin", {"user": me, "pin": "8642", "pin2": "8642"},
                                  csrf=csrf)
        assert status == 200 and "Done: set PIN" in text, text[:800]
        assert stored_pin(backend, me) == "8642"
        status, text = agent.post("/helpdesk/pin-clear", {"user": me}, csrf=csrf)
        assert status == 200 and stored_pin(backend, me) is None
        assert audit_lines(portal, "'helpdesk-pin-set'", f"user='{me}'")
        assert audit_lines(portal, "'helpdesk-pin-clear'", f"user='{me}'")
        # ... but not an administrator's.
        before = raw_state(backend, admin)
        for action, fields in (("pin", {"pin": "8642", "pin2": "8642"}), ("pin-clear", {})):
            status, _ = agent.post(f"/helpdesk/{action}", {"user": admin, **fields}, csrf=csrf)
            assert status == 403
        assert raw_state(backend, admin) == before
        assert audit_lines(portal, "'refused'", "help-desk pin-set of an administrator")
        audit = portal.audit.read_text()
        # Never a PIN (the users' names end in serial numbers, which may hold the same digits).
        assert not re.search(r"(?<!\w)(4711|8642)(?!\d)", audit), audit
