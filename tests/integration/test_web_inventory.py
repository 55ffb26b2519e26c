"""The help desk's inventory pages over HTTP, against the portal on real slapd and Samba AD:
imports (dry run, ``Error_`` file equal to the CLI's, the fixed file, a user column that
assigns), adding by hand, rename, remove, assign and return to the inventory with the
counter kept, and the refusals (no help desk, no CSRF token, protected users, big bodies
from anyone else)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from otpgate.cli import main
from otpgate.otp.oath import hotp, totp
from tests.browser.portal import WebClient, run_portal, write_config
from tests.integration.backends import USER_PASSWORD
from tests.netutil import free_port
from tests.pskcgen import OCRA, Package, pskc
from tests.integration.test_web_attacks import _upload
from tests.integration.test_web_browser import enroll_directly, new_group

BACKENDS = ["slapd-stock", "samba"]


def desk_and_portal_setup(backend: Any) -> tuple[str, str, bytes, str, str]:
    """A help-desk member with a TOTP token; (name, dn, key, group, inventory dn)."""
    desk, desk_dn = backend.new_user("desk")
    key = enroll_directly(backend, desk)
    return desk, desk_dn, key, new_group(backend, [desk_dn]), backend.inventory_dn()


def signed_in(portal: Any, name: str, key: bytes, step: int = 0) -> WebClient:
    client = WebClient(portal)
    status = client.sign_in(name, USER_PASSWORD, totp(key, time.time() + 30 * step))
    assert status == 303, f"sign-in of {name}: {status}"
    return client


def cli_config(backend: Any, tmp: Path, inventory_dn: str) -> Path:
    return write_config(tmp / f"cli-{os.urandom(3).hex()}.toml", {
        "directory": backend.directory_section(inventory_dn=inventory_dn),
        "vault": {"keyring": str(backend.keyring)},
    })


def cli(config: Path, *argv: str) -> int:
    return main([*argv, "--config", str(config)])


def prefix() -> str:
    return f"W{os.urandom(3).hex().upper()}"


def oathtool_hotp(key: bytes, counter: int) -> str:
    out = subprocess.run(["oathtool", "--hotp", "-c", str(counter), key.hex()],
                         capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.strip()


def rows_of(page: str) -> list[str]:
    return re.findall(r'<tr data-serial="([^"]+)"', page)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_pskc_dry_run_error_file_equals_the_cli_and_the_fixed_file_imports(
    backend: Any, tmp_path: Path
) -> None:
    desk, _dn, key, group, inv = desk_and_portal_setup(backend)
    tag = prefix()
    packages = [Package(f"{tag}-1", os.urandom(20)), Package(f"{tag}-2", os.urandom(20), OCRA),
                Package(f"{tag}-3", os.urandom(20), counter=7)]
    data = pskc(packages, password="batch-pw")
    source = tmp_path / "tokens.pskc"
    source.write_bytes(data)
    password_file = tmp_path / "pskc.pw"
    password_file.write_text("batch-pw\n")
    # The CLI refuses the file and writes its Error_ file.
    config = cli_config(backend, tmp_path, inv)
    assert cli(config, "import", str(source), "--format", "pskc",
               "--password-file", str(password_file)) == 1
    cli_error = (tmp_path / "Error_tokens.pskc").read_bytes()
    assert b"otpgate import ERROR (KeyPackage 2)" in cli_error

    web = {"helpdesk_groups": [group]}
    with run_portal(backend, tmp_path, web, directory={"inventory_dn": inv}) as portal:
        client = signed_in(portal, desk, key)
        csrf = client.csrf("/helpdesk/inventory")
        fields = {"csrf": csrf, "format": "pskc", "password": "batch-pw", "psk": ""}
        status, page = client.upload("/helpdesk/inventory/import", fields, "file",
                                     "tokens.pskc", data)
        assert status == 200, page
        assert "KeyPackage 2" in page and "is not supported" in page
        assert "2 would be imported, 1 have a problem" in page
        assert page.count('class="good"') == 2
        # Nothing is imported while a row has a problem.
        status, page = client.post("/helpdesk/inventory/import/confirm", csrf=csrf)
        assert status == 409 and "Nothing was imported" in page
        status, page = client.request("GET", "/helpdesk/inventory?q=" + tag)
        assert rows_of(page) == []
        # The Error_ file is the CLI's, byte for byte.
        status, _page = client.post("/helpdesk/inventory/import/error", csrf=csrf)
        assert status == 200
        assert client.last_headers["content-disposition"] == (
            'attachment; filename="Error_tokens.pskc"')
        assert client.last_body == cli_error
        assert client.last_headers["content-type"] == "application/octet-stream"
        assert client.last_headers["x-content-type-options"] == "nosniff"
        # Fixed where it is marked (the marker stays: it is a comment), it imports.
        fixed = client.last_body.replace(OCRA.encode(), b"urn:ietf:params:xml:ns:keyprov:pskc:hotp")
        status, page = client.upload("/helpdesk/inventory/import", fields, "file",
                                     "Error_tokens.pskc", fixed)
        assert status == 200 and "3 would be imported" in page and 'class="problem"' not in page
        status, page = client.post("/helpdesk/inventory/import/confirm", csrf=csrf)
        assert status == 200 and "Imported 3 token(s)" in page, page
        status, page = client.request("GET", "/helpdesk/inventory?q=" + tag)
        assert rows_of(page) == [f"{tag}-1", f"{tag}-2", f"{tag}-3"]
        # The same file again: every serial is already there.
        status, page = client.upload("/helpdesk/inventory/import", fields, "file",
                                     "Error_tokens.pskc", fixed)
        assert page.count("is already in the inventory") == 3
        client.post("/helpdesk/inventory/import/cancel", csrf=csrf)
        # A file under a pre-shared key.
        psk = os.urandom(16)
        status, page = client.upload(
            "/helpdesk/inventory/import", {**fields, "password": "", "psk": psk.hex()}, "file",
            "psk.pskc", pskc([Package(f"{tag}-4", os.urandom(20))], psk=psk))
        assert status == 200 and "1 would be imported" in page, page
        status, page = client.post("/helpdesk/inventory/import/confirm", csrf=csrf)
        assert "Imported 1 token(s)" in page
        for n in range(1, 5):
            status, _page = client.post("/helpdesk/inventory/delete", {"serial": f"{tag}-{n}"},
                                        csrf=csrf)
            assert status == 200
        status, page = client.request("GET", "/helpdesk/inventory?q=" + tag)
        assert rows_of(page) == []
    audit = portal.audit.read_text()
    for event in ("'helpdesk-import-check'", "'helpdesk-import'", "'helpdesk-inventory-delete'"):
        assert event in audit
    for secret in [p.key for p in packages]:
        assert secret.hex() not in audit and base64.b64encode(secret).decode() not in audit


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_oath_csv_user_column_assigns_and_the_user_binds_through_the_proxy(
    backend: Any, tmp_path: Path
) -> None:
    desk, _dn, key, group, inv = desk_and_portal_setup(backend)
    user, user_dn = backend.new_user("fob")
    tag = prefix()
    fob, spare = os.urandom(20), os.urandom(20)
    csv = (f"# delivery note 42\n{tag}-1, {fob.hex()}, hotp, 6, , {user}\n"
           f"{tag}-2, {spare.hex()}, totp, 6, 30\n").encode()
    proxy_port = free_port()
    web = {"helpdesk_groups": [group]}
    with run_portal(backend, tmp_path, web, twistd=True, directory={"inventory_dn": inv},
                    ldap_proxy={"listen": [f"tcp:{proxy_port}:interface=127.0.0.1"]}) as portal:
        client = signed_in(portal, desk, key)
        csrf = client.csrf("/helpdesk/inventory")
        status, template = client.request("GET", "/helpdesk/inventory/template/oath.csv")
        assert status == 200 and "user" in template
        assert all(line.startswith("#") for line in template.splitlines())
        status, page = client.upload("/helpdesk/inventory/import",
                                     {"csrf": csrf, "format": "oath-csv"}, "file", "fobs.csv", csv)
        assert status == 200 and "2 would be imported" in page and user in page, page
        status, page = client.post("/helpdesk/inventory/import/confirm", csrf=csrf)
        assert status == 200 and "Imported 2 token(s)" in page and f"{tag}-1 to {user}" in page
        status, page = client.request("GET", "/helpdesk/inventory?q=" + tag)
        assert rows_of(page) == [f"{tag}-2", f"{tag}-1"]  # in stock, then assigned
        assert user_dn.lower() in page.lower()
        # The user binds through the LDAP proxy with the fob's first code (oathtool's).
        code = oathtool_hotp(fob, 0)
        assert code == hotp(fob, 0)
        def bind(secret: str) -> int:
            return subprocess.run(
                ["ldapsearch", "-x", "-H", f"ldap://127.0.0.1:{proxy_port}", "-D", user_dn,
                 "-w", secret, "-b", "", "-s", "base", "(objectClass=*)", "1.1"],
                capture_output=True, text=True, timeout=30,
                env={**os.environ, "LDAPCONF": "/dev/null", "LDAPRC": "/nonexistent"},
            ).returncode

        assert bind(USER_PASSWORD + code) == 0
        assert bind(USER_PASSWORD + code) == 49  # spent
        client.post("/helpdesk/inventory/delete", {"serial": f"{tag}-2"}, csrf=csrf)
    audit = portal.audit.read_text()
    assert "'helpdesk-assign'" in audit and "import of fobs.csv" in audit


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_add_rename_assign_return_with_the_counter_and_remove(
    backend: Any, tmp_path: Path
) -> None:
    desk, _dn, key, group, inv = desk_and_portal_setup(backend)
    first, first_dn = backend.new_user("first")
    second, second_dn = backend.new_user("second")
    tag = prefix()
    fob = os.urandom(20)
    serial = f"{tag}-HOTP"
    web = {"helpdesk_groups": [group]}
    with run_portal(backend, tmp_path, web, directory={"inventory_dn": inv}) as portal:
        client = signed_in(portal, desk, key)
        csrf = client.csrf("/helpdesk/inventory")
        b32 = base64.b32encode(fob).decode().rstrip("=")
        status, page = client.post("/helpdesk/inventory/add", {
            "serial": serial, "key": b32, "type": "hotp", "digits": "6", "counter": "0",
            "label": "desk fob"}, csrf=csrf)
        assert status == 200 and f"Added {serial}" in page, page
        assert b32 not in page
        # A second token with the same key is refused (each code would work twice).
        status, page = client.post("/helpdesk/inventory/add", {
            "serial": f"{tag}-COPY", "key": b32, "type": "hotp"}, csrf=csrf)
        assert status == 400 and f"already in the inventory as serial {serial}" in page
        status, page = client.post("/helpdesk/inventory/rename",
                                   {"serial": serial, "label": "spare fob"}, csrf=csrf)
        assert "Renamed" in page and "spare fob" in page
        status, page = client.post("/helpdesk/inventory/assign",
                                   {"serial": serial, "user": first}, csrf=csrf)
        assert status == 200 and f"Assigned {serial}" in page, page
        # The user signs in with the fob's first code (counter 0 is spent).
        user_client = WebClient(portal)
        assert user_client.sign_in(first, USER_PASSWORD, hotp(fob, 0)) == 303
        # Found by a search, returned to the inventory with its counter.
        status, page = client.request("GET", f"/helpdesk/inventory?q={serial}")
        assert first_dn.lower() in page.lower()
        status, page = client.request("GET", "/helpdesk/inventory/token?" + urllib.parse.urlencode(
            {"serial": serial}))
        found = re.search(r'name="token" value="([^"]+)"', page)
        assert found is not None, page
        token_id = found.group(1)
        status, page = client.post("/helpdesk/inventory/unassign",
                                   {"user": first_dn, "token": token_id}, csrf=csrf)
        assert status == 200 and "back in the inventory (last used counter 0)" in page, page
        assert "Last used counter</th><td>0" in page
        status, page = client.post("/helpdesk/inventory/unassign",
                                   {"user": first_dn, "token": token_id}, csrf=csrf)
        assert "Not returned" in page  # once only
        # Given to another user, the code already used does not sign in again.
        client.post("/helpdesk/inventory/assign", {"serial": serial, "user": second}, csrf=csrf)
        assert WebClient(portal).sign_in(second, USER_PASSWORD, hotp(fob, 0)) == 401
        assert WebClient(portal).sign_in(second, USER_PASSWORD, hotp(fob, 1)) == 303
        status, page = client.request("GET", "/helpdesk?q=" + urllib.parse.quote(second_dn))
        token_id = re.search(r'id="revoke-([0-9a-f]+)"', page).group(1)
        status, page = client.post("/helpdesk/inventory/unassign",
                                   {"user": second_dn, "token": token_id}, csrf=csrf)
        assert "last used counter 1" in page
        status, page = client.post("/helpdesk/inventory/delete", {"serial": serial}, csrf=csrf)
        assert f"Removed {serial}" in page
        status, page = client.request("GET", "/helpdesk/inventory/token?serial=" + serial)
        assert "No token" in page
    audit = portal.audit.read_text()
    for event in ("helpdesk-inventory-add", "helpdesk-inventory-rename", "helpdesk-assign",
                  "helpdesk-unassign", "helpdesk-inventory-delete"):
        assert f"'{event}'" in audit, event
    assert b32 not in audit and fob.hex() not in audit


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_refused_without_help_desk_csrf_or_rights_over_the_target(
    backend: Any, tmp_path: Path
) -> None:
    desk, desk_dn, key, group, inv = desk_and_portal_setup(backend)
    plain, _plain_dn = backend.new_user("plain")
    plain_key = enroll_directly(backend, plain)
    colleague, colleague_dn = backend.new_user("colleague")
    enroll_directly(backend, colleague)
    group = new_group(backend, [desk_dn, colleague_dn])
    tag = prefix()
    serial = f"{tag}-KEEP"
    config = cli_config(backend, tmp_path, inv)
    csv = tmp_path / "keep.csv"
    csv.write_text(f"{serial}, {os.urandom(20).hex()}\n")
    assert cli(config, "import", str(csv), "--format", "oath-csv") == 0
    web = {"helpdesk_groups": [group]}
    with run_portal(backend, tmp_path, web, directory={"inventory_dn": inv}) as portal:
        outsider = signed_in(portal, plain, plain_key)
        status, page = outsider.request("GET", "/helpdesk/inventory")
        assert status == 403 and "Help desk only" in page
        csrf = outsider.csrf("/me")
        status, _page = outsider.post("/helpdesk/inventory/delete", {"serial": serial}, csrf=csrf)
        assert status == 403
        # A body over the forms' 16 KiB is refused before it is read, for anyone but the help
        # desk; a help-desk session may send an upload up to the upload cap.
        desk_client = signed_in(portal, desk, key)
        port = int(portal.url.rsplit(":", 1)[1])
        total = 1024 * 1024
        for who, wait, expected in ((outsider, 5, b"413"), (WebClient(portal), 5, b"413"),
                                    (desk_client, 0.5, b"400")):
            cookie = "; ".join(f"{k}={v}" for k, v in who.cookies.items())
            head = (b"POST /helpdesk/inventory/import HTTP/1.1\r\nHost: x\r\nCookie: %s\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n"
                    % (cookie.encode(), total))
            reply, sent, _seconds = _upload(port, head, iter([b"x" * 65536] * 16), total,
                                            wait_first=wait)
            assert reply.startswith(b"HTTP/1.1 " + expected), reply[:200]
            assert sent == (0 if expected == b"413" else total)
        real = desk_client.csrf("/helpdesk/inventory")
        for token in ("", "forged"):
            status, _page = desk_client.post("/helpdesk/inventory/delete", {"serial": serial},
                                             csrf=token)
            assert status == 403
        status, _page = desk_client.upload("/helpdesk/inventory/import", {"format": "oath-csv"},
                                           "file", "x.csv", f"{tag}-X, {os.urandom(20).hex()}\n".encode())
        assert status == 403
        status, page = desk_client.request("GET", "/helpdesk/inventory?q=" + tag)
        assert rows_of(page) == [serial]  # nothing happened
        # No tokens for other help-desk members, by hand or by import.
        status, page = desk_client.post("/helpdesk/inventory/assign",
                                        {"serial": serial, "user": colleague}, csrf=real)
        assert status == 403 and "help-desk member" in page
        csv_data = f"{tag}-Y, {os.urandom(20).hex()}, hotp, 6, , {colleague}\n".encode()
        status, page = desk_client.upload("/helpdesk/inventory/import",
                                          {"csrf": real, "format": "oath-csv"}, "file", "y.csv",
                                          csv_data)
        assert "is a help-desk member" in page and "0 would be imported" in page
        status, page = desk_client.post("/helpdesk/inventory/import/confirm", csrf=real)
        assert status == 409
        status, page = desk_client.request("GET", "/helpdesk/inventory?q=" + tag)
        assert rows_of(page) == [serial]
        status, page = desk_client.post("/helpdesk/inventory/unassign",
                                        {"user": colleague_dn, "token": "0badc0de"}, csrf=real)
        assert status == 403 and "help-desk member" in page
        # Text from a file is shown escaped, never as markup.
        uris = (f"otpauth://totp/ACME:<script>alert(1)</script>?secret=JBSWY3DPEHPK3PXP\n"
                f"otpauth://totp/<img src=x onerror=alert(2)>?secret=JBSWY3DPEHPK3PXP"
                f"&serial={tag}-Z\n").encode()
        status, page = desk_client.upload("/helpdesk/inventory/import",
                                          {"csrf": real, "format": "otpauth"}, "file",
                                          '"><svg onload=alert(3)>.txt', uris)
        assert status == 200, page
        assert "<script>alert" not in page and "<img src=x" not in page and "<svg" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x" in page
        status, _page = desk_client.post("/helpdesk/inventory/import/error", csrf=real)
        assert desk_client.last_headers["content-disposition"] == (
            'attachment; filename="Error____svg_onload_alert_3__.txt"')
        desk_client.post("/helpdesk/inventory/import/cancel", csrf=real)
        desk_client.post("/helpdesk/inventory/delete", {"serial": serial}, csrf=real)
    assert "'refused'" in portal.audit.read_text()
