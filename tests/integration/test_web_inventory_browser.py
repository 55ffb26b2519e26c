"""The help desk's inventory pages in a real browser (Debian chromium via Playwright), on slapd
and Samba AD: a PSKC file with one bad KeyPackage, its dry run, the ``Error_`` download
(the CLI's file, byte for byte), the fixed file imported; sort and search; a token added by
hand, renamed, assigned, returned to the inventory with its counter, and removed.
``OTPGATE_SCREENSHOTS=1`` writes docs/screenshots/inventory*.png from the slapd run."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest

from otpgate.otp.oath import hotp, totp
from tests.browser.portal import browser, run_portal
from tests.integration.backends import USER_PASSWORD
from tests.integration.test_web_browser import shoot, sign_in
from tests.integration.test_web_inventory import (
    cli,
    cli_config,
    desk_and_portal_setup,
    prefix,
)
from tests.pskcgen import OCRA, Package, pskc


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_import_fix_and_manage_tokens_in_the_browser(backend: Any, tmp_path: Path) -> None:
    desk, _dn, key, group, inv = desk_and_portal_setup(backend)
    user, user_dn = backend.new_user("browse")
    tag = prefix()
    data = pskc([Package(f"{tag}-1", os.urandom(20)), Package(f"{tag}-2", os.urandom(20), OCRA),
                 Package(f"{tag}-3", os.urandom(20))], password="batch-pw")
    source = tmp_path / "tokens.pskc"
    source.write_bytes(data)
    password_file = tmp_path / "pw"
    password_file.write_text("batch-pw\n")
    assert cli(cli_config(backend, tmp_path, inv), "import", str(source), "--format", "pskc",
               "--password-file", str(password_file)) == 1
    cli_error = (tmp_path / "Error_tokens.pskc").read_bytes()
    fob = os.urandom(20)
    web = {"helpdesk_groups": [group]}
    with run_portal(backend, tmp_path, web, directory={"inventory_dn": inv}) as portal, \
            browser(tmp_path) as page:
        sign_in(page, portal.url, desk, USER_PASSWORD, totp(key, time.time()))
        page.click("#nav-inventory")
        assert page.url.endswith("/helpdesk/inventory"), page.url
        # The file, checked: one KeyPackage explained, nothing imported yet.
        page.select_option("#imp-format", "pskc")
        page.set_input_files("#imp-file", str(source))
        page.fill("#imp-password", "batch-pw")
        page.click("#imp-check")
        problem = page.inner_text("tr.problem")
        assert "KeyPackage 2" in problem and "is not supported" in problem
        assert page.locator("tr.good").count() == 2
        shoot(page, backend, "inventory-dry-run")
        with page.expect_download() as waiting:
            page.click("#download-error")
        download = waiting.value
        assert download.suggested_filename == "Error_tokens.pskc"
        got = Path(download.path()).read_bytes()
        assert got == cli_error
        fixed = tmp_path / "fixed" / "Error_tokens.pskc"
        fixed.parent.mkdir()
        fixed.write_bytes(got.replace(OCRA.encode(), b"urn:ietf:params:xml:ns:keyprov:pskc:hotp"))
        page.goto(portal.url + "/helpdesk/inventory")
        page.select_option("#imp-format", "pskc")
        page.set_input_files("#imp-file", str(fixed))
        page.fill("#imp-password", "batch-pw")
        page.click("#imp-check")
        assert page.locator("tr.problem").count() == 0 and page.locator("tr.good").count() == 3
        page.click("#import")
        assert "Imported 3 token(s)" in page.inner_text("#notice")
        # Search and sort.
        page.goto(portal.url + "/helpdesk/inventory")
        page.fill("#inv-q", tag)
        page.click("#inv-search")
        rows = page.locator("#inventory tr[data-serial]")
        assert [rows.nth(i).get_attribute("data-serial") for i in range(3)] == [
            f"{tag}-1", f"{tag}-2", f"{tag}-3"]
        page.click("#sort-serial")  # again: descending
        assert rows.first.get_attribute("data-serial") == f"{tag}-3"
        shoot(page, backend, "inventory")
        # By hand: a HOTP fob; rename, assign, return with its counter, remove.
        page.fill("#add-serial", f"{tag}-HAND")
        page.fill("#add-key", base64.b32encode(fob).decode())
        page.select_option("#add-type", "hotp")
        page.click("#add")
        assert f"Added {tag}-HAND" in page.inner_text("#notice")
        page.fill("#new-label", "front desk fob")
        page.click("#rename")
        assert "front desk fob" in page.inner_text("#token")
        page.fill("#assign-user", user)
        page.click("#assign")
        assert f"Assigned {tag}-HAND" in page.inner_text("#notice")
        assert f"{tag}-HAND" in page.inner_text("#devices")
        from tests.browser.portal import WebClient

        assert WebClient(portal).sign_in(user, USER_PASSWORD, hotp(fob, 0)) == 303
        page.goto(portal.url + "/helpdesk/inventory")
        page.fill("#inv-q", f"{tag}-HAND")
        page.click("#inv-search")
        assert user_dn.lower() in page.inner_text("#assigned").lower()
        page.click(f"#assigned a:text-is('{tag}-HAND')")
        page.click("button[id^='unassign-']")
        assert "last used counter 0" in page.inner_text("#notice")
        for serial in (f"{tag}-HAND", f"{tag}-1", f"{tag}-2", f"{tag}-3"):
            page.goto(portal.url + f"/helpdesk/inventory/token?serial={serial}")
            page.click("#delete")
            assert f"Removed {serial}" in page.inner_text("#notice")
    audit = portal.audit.read_text()
    for event in ("helpdesk-import-check", "helpdesk-import", "helpdesk-inventory-add",
                  "helpdesk-inventory-rename", "helpdesk-assign", "helpdesk-unassign",
                  "helpdesk-inventory-delete"):
        assert f"'{event}'" in audit, event
