"""Codes sent by e-mail/SMS in the portal, end to end: the portal as a subprocess on loopback,
real directories (slapd; Samba AD), two real HTTPS SMS gateways (the first answers 500, the
second takes the message and the test reads the code from it) and a real SMTP server
(aiosmtpd, STARTTLS and AUTH).

- Chromium on slapd: a user with an SMS token presses "Send me a code" (a wrong password
  sends nothing and gets the generic failure), sees where it went, cannot reach anything
  else with the code step, is refused "send again" within the cooldown, signs in with the
  code; then enrolls an e-mail token with the code read from the message.
- HTTP on Samba AD: the help desk adds an SMS token to a user (protected targets and a
  POST without the CSRF token refused, nothing sent); the user signs in with the SMS code
  step (single use, CSRF, "send again" after the cooldown).
"""

from __future__ import annotations

import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import ldap3
import pytest

from otpgate.admin.sentcodes import sent_enroll_change
from otpgate.directory.sync import open_store
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from tests.browser.portal import WebClient, browser, run_portal
from tests.integration.backends import USER_PASSWORD, make_backend
from tests.integration.test_web_attacks import audit_lines, new_group, raw_state
from tests.integration.test_web_browser import code, enroll_directly, shoot
from tests.sentcodes import normalised, proven_token
from tests.servers import make_server_tls
from tests.servers.mailserver import MailServer, smtp_tables
from tests.servers.smsgateway import SmsGateway

DOT3, DOT5 = "\u2022" * 3, "\u2022" * 5
FAILED = "Sign-in failed: check your user name, password and code."


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_server_tls(tmp_path_factory.mktemp("web-sent-tls"), dns_names=["localhost"])


def enroll_sent_directly(backend: Any, name: str, kind: TokenType, attribute: str) -> None:
    """An e-mail/SMS token written with the CLI's store (its proof skipped: test set-up)."""
    config = backend.config()
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        user = store.resolve(name)
        (value,) = backend.raw_values(user.dn, attribute)
        token, secret = proven_token(kind, attribute, normalised(kind, value))
        store.update(user, lambda s: sent_enroll_change(s, token, secret))
    finally:
        store.directory.close()


def sent_tokens(backend: Any, name: str) -> list[Any]:
    config = backend.config()
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        state = store.decode(store.resolve(name))
        return [t for t in state.tokens if t.type in (TokenType.EMAIL, TokenType.SMS)]
    finally:
        store.directory.close()


def mailed_code(received: Any) -> str:
    plain = received.message.get_body(("plain",)).get_content()
    found = re.search(r"one-time code for .*: (\d{6,8})", plain)
    assert found is not None, plain
    return found.group(1)


def other_than(value: str) -> str:
    return "000000" if value != "000000" else "111111"


def csrf_of(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found is not None, text[-2000:]
    return found.group(1)


def metrics(portal: Any) -> str:
    return urllib.request.urlopen(portal.url + "/metrics", timeout=10).read().decode()


def test_sms_sign_in_and_email_enrollment_in_chromium(
    slapd: Any, tmp_path: Path, request: Any, tls: Any
) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    name, dn = backend.new_user("smsweb", mobile="+49 151 1234589")
    enroll_sent_directly(backend, name, TokenType.SMS, "mobile")
    masked_mail = f"{name[0]}{DOT3}@example.org"
    with (
        MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as mail,
        SmsGateway(tls, 500, b"internal error") as down,
        SmsGateway(tls) as up,
    ):
        delivery = {
            "smtp": smtp_tables(tmp_path, tls, mail.port),
            "sms_http": [down.table(), up.table()],
            "sms_country_prefixes": ["+49"],
        }
        with run_portal(backend, tmp_path, delivery=delivery) as portal, browser(tmp_path) as page:
            page.goto(portal.url + "/signin")
            shoot(page, backend, "signin-send")
            # A wrong password: the generic failure, nothing sent.
            page.fill("#username", name)
            page.fill("#password", USER_PASSWORD + "x")
            page.click("#send-code")
            assert page.inner_text("#error") == FAILED
            assert down.requests == [] and up.requests == []
            # The password: a code is sent; the first gateway fails, the second takes it.
            page.fill("#password", USER_PASSWORD)
            page.click("#send-code")
            assert page.url.endswith("/signin"), page.content()
            assert page.inner_text("#challenge") == f"Code sent by SMS to +{DOT5}89."
            shoot(page, backend, "signin-code")
            down.wait_for(1)
            (got,) = up.wait_for(1)
            assert got["json"]["to"] == "+491511234589" and got["json"]["ref"] == name
            (sms_code,) = up.codes()
            assert sms_code not in page.content()
            # The code step opens nothing else: /me leads back to it.
            page.goto(portal.url + "/me")
            assert page.url.endswith("/signin") and page.locator("#challenge").count() == 1
            # "Send again" while that code is valid: pointed to again, nothing sent.
            page.click("#resend")
            assert page.inner_text("#challenge") == f"Code already sent by SMS to +{DOT5}89."
            assert len(up.requests) == 1 and len(down.requests) == 1
            page.fill("#code", sms_code)
            page.click("#verify")
            assert page.url.endswith("/me"), page.content()
            assert f"code by SMS to +{DOT5}89" in page.inner_text("#devices")

            # Self-service: an e-mail token, proven by the code the message carries.
            page.click("#enroll-email")
            assert page.inner_text("#sent-to").startswith(f"Code sent to {masked_mail}.")
            shoot(page, backend, "enroll-sent")
            (message,) = mail.wait_for(1)
            assert message.rcpt_tos == [f"{name}@example.org"]
            mail_code = mailed_code(message)
            page.fill("#sent-code", other_than(mail_code))
            page.click("#sent-confirm")
            assert "not right" in page.inner_text("#error")
            assert [t.type for t in sent_tokens(backend, name)] == [TokenType.SMS]
            page.fill("#sent-code", mail_code)
            page.click("#sent-confirm")
            assert "Codes by e-mail to" in page.inner_text("#notice"), page.content()
            devices = page.inner_text("#devices")
            assert f"code by e-mail to {masked_mail}" in devices
            assert f"code by SMS to +{DOT5}89" in devices
            shoot(page, backend, "devices-sent")
            counted = metrics(portal)
    assert [t.type for t in sent_tokens(backend, name)] == [TokenType.SMS, TokenType.EMAIL]
    assert 'otpgate_codes_sent_total{channel="sms",outcome="sent"} 1.0' in counted
    assert 'otpgate_codes_sent_total{channel="sms",outcome="repeat"} 1.0' in counted
    assert 'otpgate_codes_sent_total{channel="email",outcome="sent"} 1.0' in counted
    assert 'otpgate_web_actions_total{action="enroll-sent"} 1.0' in counted
    assert audit_lines(portal, "'challenge'", f"user='{name}'", "sms code sent to")
    # The code step names the entry the first step found (its DN), never a name typed again.
    assert audit_lines(portal, "'accept'", f"user='{dn}'", "OTP accepted")
    assert audit_lines(portal, "'enroll-sent-start'", f"code sent to {masked_mail}")
    assert audit_lines(portal, "'enroll-sent'", "activated email token")
    logs = portal.log.read_text() + portal.audit.read_text()
    for secret in (sms_code, mail_code, USER_PASSWORD):
        assert secret not in logs


def test_helpdesk_enrolls_sms_and_the_user_signs_in_with_it_on_samba(
    samba_dc: Any, tmp_path: Path, request: Any, tls: Any
) -> None:
    backend = make_backend("samba", request, tmp_path)
    desk, desk_dn = backend.new_user("sdesk")
    user, _user_dn = backend.new_user("ssms", mobile="+49 151 7654321")
    admin, admin_dn = backend.new_user("sadmin", mobile="+49 151 1111111")
    desk_key = enroll_directly(backend, desk)
    desk_group = new_group(backend, [desk_dn])
    admin_group = new_group(backend, [admin_dn])
    with SmsGateway(tls, 500, b"internal error") as down, SmsGateway(tls) as up:
        delivery = {
            "sms_http": [down.table(), up.table()],
            "sms_country_prefixes": ["+49"],
            "send_cooldown": 2,
        }
        web = {"helpdesk_groups": [desk_group], "sign_in_attempts_per_minute": 60}
        policy = {"admin_groups": [admin_group]}
        with run_portal(backend, tmp_path, web, policy=policy, delivery=delivery) as portal:
            desk_client = WebClient(portal)
            assert desk_client.sign_in(desk, USER_PASSWORD, code(desk_key)) == 303
            csrf = desk_client.csrf("/helpdesk")
            status, text = desk_client.request("GET", "/helpdesk?q=" + urllib.parse.quote(user))
            assert status == 200 and 'id="hd-enroll-sms"' in text, text[-2000:]

            # An administrator: refused, nothing written, nothing sent.
            before = raw_state(backend, admin)
            status, text = desk_client.post(
                "/helpdesk/enroll-sent", {"user": admin, "kind": "sms"}, csrf=csrf
            )
            assert status == 403 and "Refused" in text
            assert raw_state(backend, admin) == before
            assert audit_lines(portal, "'refused'", "help-desk enroll-sent of an administrator")
            # Without the CSRF token: refused, nothing sent.
            status, text = desk_client.request(
                "POST", "/helpdesk/enroll-sent", {"user": user, "kind": "sms"}
            )
            assert status == 403 and "The form expired" in text
            assert up.requests == [] and down.requests == []

            # The code goes to the user's phone (second gateway); the user reads it back.
            status, page = desk_client.post(
                "/helpdesk/enroll-sent", {"user": user, "kind": "sms"}, csrf=csrf
            )
            assert status == 200, page[-2000:]
            assert f"Code sent to +{DOT5}21. Ask {user} to read it to you" in page
            down.wait_for(1)
            (got,) = up.wait_for(1)
            assert got["json"]["to"] == "+491517654321"
            (enroll_code,) = up.codes()
            assert enroll_code not in page and sent_tokens(backend, user) == []
            status, text = desk_client.post(
                "/helpdesk/enroll-sent/confirm", {"code": other_than(enroll_code)}, csrf=csrf
            )
            assert status == 400 and "not right" in text
            status, text = desk_client.post(
                "/helpdesk/enroll-sent/confirm", {"code": enroll_code}, csrf=csrf
            )
            assert status == 200 and f"Done: codes by SMS to +{DOT5}21 are active" in text
            assert f'code by SMS to <span class="destination">+{DOT5}21</span>' in text
            (token,) = sent_tokens(backend, user)
            assert token.type is TokenType.SMS and token.attribute == "mobile"
            (event,) = audit_lines(portal, "'helpdesk-enroll-sent'", f"user='{user}'")
            assert f"by {desk}: activated sms token {token.id}" in event
            assert audit_lines(portal, "'helpdesk-enroll-sent-start'", f"code sent to +{DOT5}21")

            # The user signs in with the SMS code step. A wrong password: generic, nothing sent.
            client = WebClient(portal)
            fields = {"username": user, "password": "wrong", "otp": "", "send": "1"}
            status, text = client.request("POST", "/signin", fields)
            assert status == 401 and FAILED in text and len(up.requests) == 1
            fields["password"] = USER_PASSWORD
            status, _ = client.request("POST", "/signin", fields)
            assert status == 303 and client.last_headers["location"] == "/signin"
            status, text = client.request("GET", "/signin")
            assert status == 200 and f"Code sent by SMS to +{DOT5}21." in text
            step = csrf_of(text)
            up.wait_for(2)
            first = up.codes()[-1]
            # The code step is no session: nothing else opens with it.
            assert client.request("GET", "/me")[0] == 303
            assert client.request("POST", "/scratch", {"csrf": step})[0] == 303
            assert client.request("POST", "/signin/resend", {"csrf": "forged"})[0] == 403
            # Single use: a wrong code ends it; the right one then no longer helps.
            status, text = client.request("POST", "/signin/code", {"csrf": step, "code": "1"})
            assert status == 401 and FAILED in text
            status, text = client.request("POST", "/signin/code", {"csrf": step, "code": first})
            assert status == 401 and "code step is over" in text

            # Again; "send again" after the cooldown sends a new code, which signs in.
            time.sleep(2.1)
            assert client.request("POST", "/signin", fields)[0] == 303
            status, text = client.request("GET", "/signin")
            step = csrf_of(text)
            up.wait_for(3)
            time.sleep(2.1)
            status, text = client.request("POST", "/signin/resend", {"csrf": step})
            assert status == 200 and "A new code was sent." in text, text[-2000:]
            up.wait_for(4)
            newest = up.codes()[-1]
            status, _ = client.request("POST", "/signin/code", {"csrf": step, "code": newest})
            assert status == 303 and client.last_headers["location"] == "/me"
            status, text = client.request("GET", "/me")
            assert status == 200 and "code by SMS to" in text

            # The insider with the phished password points her own mobile at her phone
            # (AD lets SELF write it), then calls the help desk as the user: the agent is
            # stopped and told; nothing is sent until the caller was verified otherwise.
            own = backend.server.connect(_user_dn, USER_PASSWORD)
            try:
                mobile = {"mobile": [(ldap3.MODIFY_REPLACE, ["+49 170 9999921"])]}
                assert own.modify(_user_dn, mobile), own.result
            finally:
                own.unbind()
            sent_before = len(up.requests)
            status, page = desk_client.post(
                "/helpdesk/enroll-sent", {"user": user, "kind": "sms"}, csrf=csrf
            )
            assert status == 200 and "Verify the caller by other means" in page
            assert 'id="verified"' in page and len(up.requests) == sent_before
            assert audit_lines(portal, "'refused'", "verification of the caller asked")
            status, page = desk_client.post(
                "/helpdesk/enroll-sent",
                {"user": user, "kind": "sms", "verified": "yes"},
                csrf=csrf,
            )
            assert status == 200 and f"Code sent to +{DOT5}21." in page
            assert up.wait_for(sent_before + 1)[-1]["json"]["to"] == "+491709999921"
            counted = metrics(portal)
    assert 'otpgate_web_actions_total{action="helpdesk-enroll-sent"} 1.0' in counted
    assert 'otpgate_codes_sent_total{channel="sms",outcome="sent"} 5.0' in counted
    logs = portal.log.read_text() + portal.audit.read_text()
    for secret in (enroll_code, first, newest):
        assert secret not in logs
