"""The demo's pieces without starting it: its config file, port checks, banner, directory."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from otpgate.config import parse_config
from otpgate.configfile import parse_listen
from otpgate.demo import (
    DEMO_HELPDESK_DN,
    DEMO_HELPDESK_GROUP,
    DEMO_MAIL_USER_DN,
    DEMO_RADIUS_SECRET,
    DemoPorts,
    demo_config_text,
    load_demo_tree,
)
from otpgate.demomail import MailSink, message_text
from otpgate.errors import ConfigError
from otpgate.outofband.codes import code_mail
from otpgate.outofband.mail import build_message
from otpgate.twistd import DemoToken, demo_banner


def test_demo_config_is_a_real_config_on_loopback(tmp_path: Path) -> None:
    text = demo_config_text(40000, DemoPorts(20389, 21812, 20080), 40025)
    config = parse_config(tomllib.loads(text), tmp_path)
    assert config.directory.urls == ("ldap://127.0.0.1:40000",)
    assert config.directory.profile.name == "openldap"
    assert config.keyring == tmp_path / "keyring.json"
    assert [parse_listen(d).interface for d in config.ldap_proxy.listen] == ["127.0.0.1"]
    assert not config.ldap_proxy.require_tls_for_binds  # loopback, no certificate: allowed
    assert config.radius.listen == ("127.0.0.1:21812",)
    (client,) = config.radius.clients
    assert str(client.network) == "127.0.0.1/32" and client.mode == "append"
    assert client.require_message_authenticator and len(DEMO_RADIUS_SECRET) >= 16
    (web,) = (parse_listen(d) for d in config.web.listen)
    assert (web.interface, web.port, web.tls) == ("127.0.0.1", 20080, False)
    assert config.web.helpdesk_groups == (DEMO_HELPDESK_GROUP.lower(),)
    assert [str(n) for n in config.web.metrics_networks] == ["127.0.0.0/8"]
    # carol's codes: by e-mail to the demo's mail sink, asked for with "password,email".
    assert config.otp.otp_delimiter == ","
    assert config.delivery is not None
    (smtp,) = config.delivery.smtp
    assert (smtp.host, smtp.port, smtp.security) == ("127.0.0.1", 40025, "none")
    assert ("email", "email") in [(w, c) for w, c in config.delivery.codes.triggers]


def test_demo_directory_has_the_help_desk_group_and_its_member() -> None:
    results: list[object] = []
    defer.ensureDeferred(load_demo_tree()).addBoth(results.append)
    (tree,) = results
    group: list[object] = []
    tree.lookup(DEMO_HELPDESK_GROUP).addBoth(group.append)
    members = [m.decode() for m in group[0][b"member"]]  # type: ignore[index]
    assert members == [DEMO_HELPDESK_DN]


@pytest.mark.parametrize(
    ("option", "kind"),
    [("--port", socket.SOCK_STREAM), ("--radius-port", socket.SOCK_DGRAM),
     ("--web-port", socket.SOCK_STREAM)],
)
def test_a_busy_port_names_its_option(option: str, kind: int) -> None:
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            busy.listen(1)
        port = busy.getsockname()[1]
        free = {"--port": _free(socket.SOCK_STREAM), "--radius-port": _free(socket.SOCK_DGRAM),
                "--web-port": _free(socket.SOCK_STREAM), option: port}
        ports = DemoPorts(free["--port"], free["--radius-port"], free["--web-port"])
        with pytest.raises(ConfigError, match=rf"^{option} {port}: cannot listen on 127\.0\.0\.1"):
            ports.check_free()


def test_one_tcp_port_for_two_listeners_is_refused() -> None:
    with pytest.raises(ConfigError, match="--port and --web-port are both 20389"):
        DemoPorts(20389, 21812, 20389).check_free()


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_banner_one_line_per_front_end_then_the_qr_codes(tmp_path: Path) -> None:
    alice = DemoToken("alice", "otpauth://totp/otpgate%20demo:alice?secret=AAAA", "AAAA")
    dana = DemoToken("dana", "otpauth://totp/otpgate%20demo:dana?secret=DDDD", "DDDD")
    config = tmp_path / "otpgate.toml"
    banner = demo_banner(DemoPorts(1, 2, 3), alice, dana, config)
    labels = re.findall(r"^  ([\w-]+) ", banner, re.M)
    assert labels == ["LDAP", "RADIUS", "portal", "metrics", "CLI", "e-mail"]
    assert "radtest -x alice alice-password,$(" in banner and "127.0.0.1:2 0 " in banner
    assert f"-D {DEMO_MAIL_USER_DN} -w carol-password,email" in banner
    assert "-w carol-password,CODE" in banner
    assert "http://127.0.0.1:3 " in banner and "curl http://127.0.0.1:3/metrics" in banner
    assert f"show alice --config {config}" in banner
    assert "dana-password" in banner and "code --secret DDDD" in banner
    assert banner.index("CLI") < banner.index("█")  # commands first, QR codes after


def test_demo_directory_has_carol_with_one_mail_address() -> None:
    results: list[object] = []
    defer.ensureDeferred(load_demo_tree()).addBoth(results.append)
    (tree,) = results
    found: list[object] = []
    tree.lookup(DEMO_MAIL_USER_DN).addBoth(found.append)
    assert found[0][b"mail"] == [b"carol@demo.otpgate"]  # type: ignore[index]


def test_mail_sink_shows_what_it_received() -> None:
    shown: list[tuple[str, str]] = []
    server = MailSink(lambda to, text: shown.append((to, text))).buildProtocol(None)
    transport = StringTransport()
    server.makeConnection(transport)
    message = build_message("otpgate@demo.otpgate", "carol@demo.otpgate",
                            code_mail("12345678", "otpgate demo", 300))
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    server.dataReceived(
        b"EHLO client\r\nMAIL FROM:<otpgate@demo.otpgate>\r\n"
        b"RCPT TO:<carol@demo.otpgate>\r\nDATA\r\n" + data + b".\r\nQUIT\r\n"
    )
    replies = [line.split(" ")[0] for line in transport.value().decode().splitlines()]
    assert replies == ["220", "250", "250", "250", "354", "250", "221"]
    ((to, text),) = shown
    assert to == "carol@demo.otpgate"
    assert text.splitlines()[:2] == [
        "Subject: Your one-time code for otpgate demo",
        "Your one-time code for otpgate demo: 12345678",
    ]
    assert message_text(b"Subject: x\n\nbody\n") == "Subject: x\nbody"
