"""``otpgate scratch USER --mail`` end to end: the CLI (in a subprocess: it runs the Twisted
reactor for the send) against slapd and Samba AD, with a real SMTP server (aiosmtpd,
STARTTLS and AUTH) on loopback whose received message the test reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from otpgate.otp.scratch import verify_scratch
from otpgate.tokens import TokenType
from tests.integration.test_cli import Cli
from tests.netutil import free_port
from tests.servers import make_server_tls
from tests.servers.mailserver import MailServer

REPO = Path(__file__).resolve().parents[2]
DOT3 = "\u2022" * 3


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_server_tls(tmp_path_factory.mktemp("cli-smtp-tls"), dns_names=["localhost"])


def with_delivery(cli: Cli, tls, *ports: int, attribute: str = "") -> None:
    """Append [delivery] with SMTP servers (STARTTLS, AUTH, the test CA) to the config."""
    password = cli.tmp / "smtp-password"
    password.write_text("mail-pw\n")
    text = cli.config.read_text()
    if attribute:
        text += f'[delivery]\nmail_attribute = "{attribute}"\n\n'
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
    cli.config.write_text(text)


def run(cli: Cli, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "otpgate.cli", *argv, "--config", str(cli.config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def scratch_tokens(cli: Cli, name: str):
    store = cli.store()
    state = store.decode(store.resolve(name))
    return [t for t in state.tokens if t.type is TokenType.SCRATCH]


def test_scratch_mail_delivers_the_list_and_prints_only_the_masked_address(
    backend, tmp_path, capsys, tls
):
    cli = Cli(backend, tmp_path, capsys)
    name, _dn = backend.new_user("sm", mail="alice.sm@example.org")
    with MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as server:
        with_delivery(cli, tls, free_port(), server.port)  # the first server is down
        done = run(cli, "scratch", name, "--mail", "--count", "4", "--json")
        assert done.returncode == 0, done.stderr
        (got,) = server.wait_for(1)
    doc = json.loads(done.stdout)
    assert doc["sent_to"] == f"a{DOT3}@example.org"
    assert doc["delivered_by"] == f"smtp://localhost:{server.port}"
    assert [a["failure"] for a in doc["attempts"]] == ["connection refused", None]
    assert "codes" not in doc
    assert got.rcpt_tos == ["alice.sm@example.org"] and got.auth_login == "otpgate"
    plain = got.message.get_body(("plain",)).get_content()
    html = got.message.get_body(("html",)).get_content()
    codes = ["".join(line.split()[1:]) for line in plain.splitlines() if line.strip()[:1].isdigit()]
    assert len(codes) == 4 and all(len(c) == 8 and c.isdigit() for c in codes)
    # The card is the printable HTML card, with the same codes.
    assert "backup codes" in html and all(f"{c[:4]} {c[4:]}" in html for c in codes)
    # The mailed codes are the stored list, and none of them reached the admin's terminal.
    (token,) = scratch_tokens(cli, name)
    assert token.id == doc["token"]
    assert all(verify_scratch(token.scratch, c, frozenset()) is not None for c in codes)
    for code in codes:
        assert code not in done.stdout + done.stderr
        assert f"{code[:4]} {code[4:]}" not in done.stdout + done.stderr

    # Without --mail the command prints its list as before.
    printed = run(cli, "scratch", name, "--count", "3")
    assert printed.returncode == 0 and "new scratch list" in printed.stdout


def test_scratch_mail_when_every_server_fails(backend, tmp_path, capsys, tls):
    cli = Cli(backend, tmp_path, capsys)
    name, _dn = backend.new_user("sf", mail="bob.sf@example.org")
    first = cli.json("scratch", name, "--count", "3")
    with MailServer(tls, "starttls", users={"otpgate": "other-pw"}) as server:
        with_delivery(cli, tls, free_port(), server.port)  # down; AUTH refused
        done = run(cli, "scratch", name, "--mail")
        assert server.messages == []
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"could not be sent to b{DOT3}@example.org" in done.stderr
    assert "connection refused" in done.stderr and "AUTH refused" in done.stderr
    assert "--card" in done.stderr
    # Decided: the new list stays (one consistent write), the old one no longer works.
    (token,) = scratch_tokens(cli, name)
    assert token.id != first["token"]
    assert verify_scratch(token.scratch, first["codes"][0], frozenset()) is None


def test_scratch_mail_needs_an_address_and_servers(backend, tmp_path, capsys, tls):
    cli = Cli(backend, tmp_path, capsys)
    name, _dn = backend.new_user("sn")
    # No [delivery]: a usage error, nothing written.
    done = run(cli, "scratch", name, "--mail")
    assert done.returncode == 2 and "[[delivery.smtp]]" in done.stderr
    assert scratch_tokens(cli, name) == []
    # The address is read from the configured attribute, which this user does not have.
    with_delivery(cli, tls, free_port(), attribute="street")
    done = run(cli, "scratch", name, "--mail")
    assert done.returncode == 1 and "has no street attribute" in done.stderr
    assert "nothing was changed" in done.stderr
    assert scratch_tokens(cli, name) == []
    done = run(cli, "scratch", name, "--mail", "--card", str(tmp_path / "c.html"))
    assert done.returncode == 2 and not (tmp_path / "c.html").exists()
