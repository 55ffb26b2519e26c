"""The help desk sends a new scratch list to a user's own address, over HTTP against the
portal (a subprocess on loopback) on slapd and Samba AD, with a real SMTP server (aiosmtpd,
STARTTLS and AUTH) whose received message the test reads; once under ``twistd otpgate``.

- the list arrives with the codes; the codes are in no page, audit line or log line;
- administrators and help-desk members are refused, nothing written, nothing sent;
- a user without a mail attribute: a clear message, nothing written, nothing sent;
- a POST without the CSRF token is refused;
- every server failing: the new list is kept and the page says so.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from otpgate.directory.sync import open_store
from otpgate.otp.scratch import verify_scratch
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from tests.browser.portal import WebClient, run_portal
from tests.integration.backends import USER_PASSWORD, make_backend
from tests.integration.test_web_attacks import audit_lines, new_group, raw_state
from tests.integration.test_web_browser import code, enroll_directly
from tests.netutil import free_port
from tests.servers import make_server_tls
from tests.servers.mailserver import MailServer, smtp_tables

DOT3 = "\u2022" * 3


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_server_tls(tmp_path_factory.mktemp("web-smtp-tls"), dns_names=["localhost"])


def delivery(tmp: Path, tls: Any, *ports: int) -> dict[str, Any]:
    """[delivery] with SMTP servers in this order (STARTTLS, AUTH, the test CA)."""
    servers = smtp_tables(tmp, tls, *ports)
    return {"smtp": servers}


def scratch_tokens(backend: Any, name: str) -> list[Any]:
    config = backend.config()
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        state = store.decode(store.resolve(name))
        return [t for t in state.tokens if t.type is TokenType.SCRATCH]
    finally:
        store.directory.close()


def mailed_codes(received: Any) -> list[str]:
    plain = received.message.get_body(("plain",)).get_content()
    return [
        "".join(line.split()[1:]) for line in plain.splitlines() if line.strip()[:1].isdigit()
    ]


def without_mail(backend: Any, prefix: str) -> tuple[str, str]:
    """A user whose entry has no mail attribute (slapd's test users get one by default)."""
    name, dn = backend.new_user(prefix)
    if not backend.is_ad:
        conn = backend.admin()
        try:
            assert conn.modify(dn, {"mail": [("MODIFY_DELETE", [])]}), conn.result
        finally:
            conn.unbind()
    return name, dn


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_helpdesk_sends_a_scratch_list_by_mail(backend: Any, tmp_path: Path, tls: Any) -> None:
    desk, desk_dn = backend.new_user("hmdesk")
    admin, admin_dn = backend.new_user("hmadmin", mail="admin.hm@example.org")
    plain, plain_dn = backend.new_user("hmplain", mail="alice.hm@example.org")
    bare, _bare_dn = without_mail(backend, "hmbare")
    desk_key = enroll_directly(backend, desk)
    for name in (admin, plain, bare):
        enroll_directly(backend, name)
    desk_group = new_group(backend, [desk_dn])
    admin_group = new_group(backend, [admin_dn])
    with MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as server:
        down = free_port()
        with run_portal(
            backend,
            tmp_path,
            {"helpdesk_groups": [desk_group]},
            policy={"admin_groups": [admin_group]},
            delivery=delivery(tmp_path, tls, down, server.port),
        ) as portal:
            client = WebClient(portal)
            assert client.sign_in(desk, USER_PASSWORD, code(desk_key)) == 303
            csrf = client.csrf("/helpdesk")
            status, text = client.request("GET", "/helpdesk?q=" + urllib.parse.quote(plain))
            assert status == 200 and 'id="hd-scratch-mail"' in text, text[-2000:]

            # Without the CSRF token: refused, nothing written, nothing sent.
            before = raw_state(backend, plain)
            status, text = client.request("POST", "/helpdesk/scratch-mail", {"user": plain})
            assert status == 403 and "The form expired" in text
            assert raw_state(backend, plain) == before and server.messages == []
            assert audit_lines(portal, "'refused'", "bad CSRF token on /helpdesk/scratch-mail")

            # Sent: the first server is down, the second takes it.
            status, page = client.post("/helpdesk/scratch-mail", {"user": plain}, csrf=csrf)
            assert status == 200, page[-2000:]
            masked = f"a{DOT3}@example.org"
            by = f"smtp://localhost:{server.port}"
            assert f"sent to {masked} by {by}" in page, page[-2000:]
            assert 'id="codes"' not in page
            (got,) = server.wait_for(1)
            assert got.rcpt_tos == ["alice.hm@example.org"] and got.auth_login == "otpgate"
            codes = mailed_codes(got)
            assert len(codes) == 10 and all(len(c) == 8 and c.isdigit() for c in codes)
            (token,) = scratch_tokens(backend, plain)
            assert token.id in page
            assert all(verify_scratch(token.scratch, c, frozenset()) is not None for c in codes)
            (event,) = audit_lines(portal, "'helpdesk-scratch-mail'", f"user='{plain}'")
            assert f"by {desk}: new scratch list sent to {masked} by {by}" in event
            assert f"'{token.id}'" in event and plain_dn.split(",")[0] in event

            # A protected target: refused, nothing written, nothing sent.
            before = raw_state(backend, admin)
            status, text = client.post("/helpdesk/scratch-mail", {"user": admin}, csrf=csrf)
            assert status == 403 and "Refused" in text
            assert raw_state(backend, admin) == before
            assert audit_lines(portal, "'refused'", "help-desk scratch-mail of an administrator")
            # Nor can a help-desk member (oneself) be sent one.
            before = raw_state(backend, desk)
            status, _ = client.post("/helpdesk/scratch-mail", {"user": desk}, csrf=csrf)
            assert status == 403 and raw_state(backend, desk) == before

            # No mail attribute: a clear message, nothing written, nothing sent.
            before = raw_state(backend, bare)
            status, text = client.post("/helpdesk/scratch-mail", {"user": bare}, csrf=csrf)
            assert status == 200 and f"{bare} has no mail attribute" in text, text[-2000:]
            assert "nothing was changed" in text
            assert raw_state(backend, bare) == before
            assert len(server.messages) == 1
            pages = page + text
        logs = portal.log.read_text() + portal.audit.read_text()
    for value in codes:
        for form in (value, f"{value[:4]} {value[4:]}"):
            assert form not in pages and form not in logs


def test_helpdesk_scratch_mail_when_every_server_fails(
    slapd: Any, tmp_path: Path, request: Any, tls: Any
) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    desk, desk_dn = backend.new_user("hfdesk")
    plain, _ = backend.new_user("hfplain", mail="bob.hf@example.org")
    desk_key = enroll_directly(backend, desk)
    enroll_directly(backend, plain)
    group = new_group(backend, [desk_dn])
    with MailServer(tls, "starttls", users={"otpgate": "other-pw"}) as server:
        with run_portal(
            backend,
            tmp_path,
            {"helpdesk_groups": [group]},
            delivery=delivery(tmp_path, tls, free_port(), server.port),  # down; AUTH refused
            twistd=True,  # the real service, as deployed
        ) as portal:
            client = WebClient(portal)
            assert client.sign_in(desk, USER_PASSWORD, code(desk_key)) == 303
            csrf = client.csrf("/helpdesk")
            status, text = client.post("/helpdesk/scratch", {"user": plain}, csrf=csrf)
            assert status == 200
            first = text.split('id="codes">', 1)[1].split("<li>")[1].split("<")[0]
            status, page = client.post("/helpdesk/scratch-mail", {"user": plain}, csrf=csrf)
            assert status == 200 and server.messages == []
            assert f"is active but could not be sent to b{DOT3}@example.org" in page
            assert "connection refused" in page and "AUTH refused" in page
            assert "issue another" in page
            (event,) = audit_lines(portal, "'helpdesk-scratch-mail'", f"user='{plain}'")
            assert "could not be sent to" in event and "AUTH refused" in event
    # Decided as for the CLI: the new list stays, the old one no longer works.
    (token,) = scratch_tokens(backend, plain)
    assert token.id in page
    assert verify_scratch(token.scratch, first.replace(" ", ""), frozenset()) is None
