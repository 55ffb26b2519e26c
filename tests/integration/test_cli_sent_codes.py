"""``otpgate enroll USER --type email|sms`` end to end against slapd and Samba AD: the CLI in
a subprocess (it runs the Twisted reactor for the send) with a real SMTP server (aiosmtpd,
STARTTLS and AUTH) on loopback.  The test reads the code from the message the server
received and types it back on the CLI's standard input, as an admin reads it off the
user's screen; then ``otpgate show`` masks where the codes go."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ldap3.core.exceptions import LDAPNoSuchObjectResult

from otpgate.config import load_config
from otpgate.tokens import OUT_OF_BAND
from tests.integration.test_cli import Cli
from tests.netutil import free_port
from tests.servers import make_server_tls
from tests.servers.mailserver import MailServer, Received

REPO = Path(__file__).resolve().parents[2]
DOT3 = "\u2022" * 3
DOT5 = "\u2022" * 5
SLAPD_AND_SAMBA = pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_server_tls(tmp_path_factory.mktemp("cli-oob-tls"), dns_names=["localhost"])


def with_delivery(cli: Cli, tls, *ports: int, sms: bool = False) -> None:
    """Append [delivery] (8-digit codes; the e-mail-to-SMS gateway with ``sms``) and
    STARTTLS + AUTH servers with the test CA to the config."""
    password = cli.tmp / "smtp-password"
    password.write_text("mail-pw\n")
    text = cli.config.read_text() + "[delivery]\ncode_digits = 8\n"
    if sms:
        text += 'sms_country_prefixes = ["+49"]\n'
    text += "\n"
    for port in ports:
        text += (
            "[[delivery.smtp]]\n"
            'host = "localhost"\n'
            f"port = {port}\n"
            f'ca_file = "{tls.ca_file}"\n'
            'username = "otpgate"\n'
            f'password_file = "{password}"\n'
            'from = "otpgate@example.org"\n'
            "timeout = 5\n\n"
        )
    if sms:
        text += '[delivery.sms_email]\naddress = "{to}@sms.example.net"\n\n'
    cli.config.write_text(text)


def start(cli: Cli, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "otpgate.cli", *argv, "--config", str(cli.config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def code_in(message: Received) -> str:
    body = message.message.get_body(("plain",))
    assert body is not None
    found = re.search(r"code for [^:]+: (\d{8})\b", body.get_content())
    assert found, body.get_content()
    return found.group(1)


def sent_tokens(cli: Cli, name: str) -> list:
    store = cli.store()
    try:
        state = store.decode(store.resolve(name))
    finally:
        store.directory.close()
    return [t for t in state.tokens if t.type in OUT_OF_BAND]


def state_values(cli: Cli, backend, dn: str):
    """A function reading the raw values of the user's three OTP state attributes."""
    config = load_config(cli.config)
    names = [m.spec.name for m in (config.directory.seed, config.directory.tokens,
                                   config.directory.used)]

    def read() -> dict[str, list[bytes] | None]:
        found: dict[str, list[bytes] | None] = {}
        for n in names:
            try:
                found[n] = sorted(backend.state_values(dn, n, config))
            except LDAPNoSuchObjectResult:  # AD: the state entry is made by the first write
                found[n] = None
        return found

    return read


@SLAPD_AND_SAMBA
def test_enroll_email_with_the_code_from_the_message_then_show_masks(
    backend, tmp_path, capsys, tls
):
    cli = Cli(backend, tmp_path, capsys)
    name, dn = backend.new_user("ee", mail="erin.ee@example.org")
    with MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as server:
        with_delivery(cli, tls, free_port(), server.port)  # the first server is down
        proc = start(cli, "enroll", name, "--type", "email", "--label", "inbox")
        (got,) = server.wait_for(1, timeout=60)
        code = code_in(got)
        # Nothing is written before the code comes back.
        assert sent_tokens(cli, name) == []
        out, err = proc.communicate(f"{code}\n", timeout=60)
    assert proc.returncode == 0, err
    assert got.rcpt_tos == ["erin.ee@example.org"] and got.auth_login == "otpgate"
    lines = out.splitlines()
    assert lines[0] == f"code sent to e{DOT3}@example.org by smtp://localhost:{server.port}"
    assert "enrolled e-mail token" in lines[1] and f"(e{DOT3}@example.org)" in lines[1]
    assert code not in out + err and "erin.ee" not in out + err
    (token,) = sent_tokens(cli, name)
    assert (token.attribute, token.digits, token.label) == ("mail", 8, "inbox")

    # show: the type, the attribute and the masked address read now, the code facts.
    shown = cli("show", name)
    assert re.search(rf"email {token.id}: to mail e{DOT3}@example\.org; none outstanding", shown)
    assert "codes sent in the last hour: 0" in shown
    doc = cli.json("show", name)
    (row,) = doc["tokens"]
    assert row["destination"] == f"e{DOT3}@example.org" and row["attribute"] == "mail"
    assert row["code"] is None and doc["sends_last_hour"] == 0
    assert "erin.ee" not in shown + json.dumps(doc)

    # The address changes in the directory: show reads it now; gone, it says so.
    modify(backend, dn, [("MODIFY_REPLACE", ["xavier@example.net"])])
    shown = cli("show", name)
    assert f"email {token.id}: to mail x{DOT3}@example.net; none outstanding" in shown
    modify(backend, dn, [("MODIFY_DELETE", [])])
    shown = cli("show", name)
    assert f"email {token.id}: to mail no value; none outstanding" in shown
    assert "xavier" not in shown


def modify(backend, dn: str, changes) -> None:
    admin = backend.admin()
    try:
        assert admin.modify(dn, {"mail": changes}), admin.result
    finally:
        admin.unbind()


@SLAPD_AND_SAMBA
def test_wrong_code_three_times_leaves_nothing_written(backend, tmp_path, capsys, tls):
    cli = Cli(backend, tmp_path, capsys)
    name, dn = backend.new_user("ew", mail="wanda.ew@example.org")
    state = state_values(cli, backend, dn)
    before = state()
    with MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as server:
        with_delivery(cli, tls, server.port)
        proc = start(cli, "enroll", name, "--type", "email", "--json")
        (got,) = server.wait_for(1, timeout=60)
        code = code_in(got)
        wrong = [c for c in ("00000000", "11111111", "22222222", "33333333") if c != code][:3]
        out, err = proc.communicate("\n".join([*wrong, code]) + "\n", timeout=60)
    assert proc.returncode == 1
    assert err.splitlines()[1:] == [
        "wrong code; 2 more tries",
        "wrong code; 1 more try",
        "otpgate enroll: wrong code 3 times: the token was not enrolled; nothing was changed",
    ]
    assert err.splitlines()[0].startswith(f"code sent to w{DOT3}@example.org by ")
    assert json.loads(out)["command"] == "enroll"  # --json: the error as JSON
    assert sent_tokens(cli, name) == []
    assert state() == before
    assert cli.json("show", name)["tokens"] == []


@SLAPD_AND_SAMBA
def test_enroll_sms_through_the_email_to_sms_gateway(backend, tmp_path, capsys, tls):
    cli = Cli(backend, tmp_path, capsys)
    name, _dn = backend.new_user("es", mobile="+49 (151) 1234-5689")
    abroad, _dn = backend.new_user("ea", mobile="+1 555 0100 42")
    with MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as server:
        with_delivery(cli, tls, server.port, sms=True)
        refused = start(cli, "enroll", abroad, "--type", "sms")
        out, err = refused.communicate("", timeout=60)
        assert refused.returncode == 1 and out == ""
        assert err.strip() == (
            f"otpgate enroll: no SMS code was sent: +{DOT5}42 is outside "
            "sms_country_prefixes; nothing was changed"
        )
        proc = start(cli, "enroll", name, "--type", "sms")
        (got,) = server.wait_for(1, timeout=60)
        assert got.rcpt_tos == ["4915112345689@sms.example.net"]
        text = got.message.get_body(("plain",)).get_content()
        code = re.search(r"\b(\d{8})\b", text).group(1)
        out, err = proc.communicate(f"{code}\n", timeout=60)
    assert proc.returncode == 0, err
    assert f"code sent to +{DOT5}89 by sms-email via smtp://localhost:{server.port}" in out
    (token,) = sent_tokens(cli, name)
    assert token.attribute == "mobile"
    assert sent_tokens(cli, abroad) == []
    shown = cli("show", name)
    assert f"sms {token.id}: to mobile +{DOT5}89; none outstanding" in shown
    assert "1234" not in shown


@SLAPD_AND_SAMBA
def test_no_gateway_or_no_address_writes_nothing(backend, tmp_path, capsys, tls):
    cli = Cli(backend, tmp_path, capsys)
    name, _dn = backend.new_user("en")
    done = start(cli, "enroll", name, "--type", "email")
    _out, err = done.communicate("", timeout=60)
    assert done.returncode == 2 and "[[delivery.smtp]]" in err and "nothing was changed" in err
    with_delivery(cli, tls, free_port())
    started = time.monotonic()
    done = start(cli, "enroll", name, "--type", "email", "--attribute", "street")
    _out, err = done.communicate("", timeout=60)
    assert done.returncode == 1 and "has no street attribute" in err, err
    assert time.monotonic() - started < 30
    assert sent_tokens(cli, name) == []
