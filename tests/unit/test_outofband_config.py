"""The ``[delivery]`` section: each bad value is one ConfigError naming its key; masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from otpgate.configfile import Section
from otpgate.errors import ConfigError
from otpgate.outofband.config import parse_delivery
from otpgate.outofband.mask import mask, mask_email, mask_phone
from otpgate.outofband.result import Attempt, Delivery
from otpgate.outofband.sms import SmsMessage, email_address, render_body

SMTP = {"host": "mail.example.org", "from": "otpgate@example.org"}
SMS = {"url": "https://sms.example.net/send", "body": {"to": "{to}", "text": "{code}"}}


def parse(tmp_path: Path, doc: dict):
    (tmp_path / "secret").write_text("token\n")
    if not (tmp_path / "ca.pem").exists():
        from tests.servers.tlsca import make_server_tls

        ca = make_server_tls(tmp_path / "tls", dns_names=["localhost"]).ca_file
        (tmp_path / "ca.pem").write_bytes(ca.read_bytes())
    return parse_delivery(Section(doc, "delivery"), tmp_path)


def test_absent_section_means_no_delivery(tmp_path):
    assert parse(tmp_path, {}) is None


def test_a_full_section(tmp_path):
    config = parse(
        tmp_path,
        {
            "mail_attribute": "otherMailbox",
            "smtp": [
                {**SMTP, "username": "u", "password_file": "secret", "ca_file": "ca.pem"},
                {**SMTP, "host": "127.0.0.1", "security": "none"},
                {**SMTP, "security": "tls"},
            ],
            "sms_http": [
                {
                    **SMS,
                    "headers": {"Authorization": "Bearer {secret}"},
                    "secret_file": "secret",
                    "format": "form",
                    "ok_status": [200],
                    "ok_body": "OK",
                }
            ],
            "sms_email": {"address": "{to}@sms.example.net"},
            "sms_country_prefixes": ["+49", "+4930"],
        },
    )
    assert config is not None and config.mail_attribute == "otherMailbox"
    assert config.sms_country_prefixes == ("+49", "+4930")
    assert [(s.port, s.security) for s in config.smtp] == [
        (587, "starttls"),
        (25, "none"),
        (465, "tls"),
    ]
    assert config.smtp[0].password == "token" and "token" not in repr(config)
    assert config.sms_http[0].headers == (("Authorization", "Bearer token"),)
    assert config.sms_http[0].name == "https://sms.example.net/send"


BAD = [
    ({"smtp": [{"from": "a@b"}]}, "delivery.smtp[0].host"),
    ({"smtp": [{"host": "h"}]}, "delivery.smtp[0].from"),
    ({"smtp": [{**SMTP, "from": "nobody"}]}, "delivery.smtp[0].from"),
    ({"smtp": [{**SMTP, "security": "ssl"}]}, "delivery.smtp[0].security"),
    ({"smtp": [{**SMTP, "security": "none"}]}, "delivery.smtp[0].security"),
    ({"smtp": [{**SMTP, "port": 0}]}, "delivery.smtp[0].port"),
    ({"smtp": [{**SMTP, "timeout": 0}]}, "delivery.smtp[0].timeout"),
    ({"smtp": [{**SMTP, "password": "pw"}]}, "delivery.smtp[0].password"),
    ({"smtp": [{**SMTP, "username": "u"}]}, "delivery.smtp[0].username"),
    ({"smtp": [{**SMTP, "username": "u", "password_file": "nope"}]}, "password_file"),
    ({"smtp": [{**SMTP, "ca_file": "missing.pem"}]}, "delivery.smtp[0].ca_file"),
    ({"smtp": [{**SMTP, "colour": "red"}]}, "delivery.smtp[0].colour"),
    ({"smtp": {"host": "h"}}, "[delivery].smtp"),
    ({"sms_http": [{**SMS, "url": "http://sms.example.net/"}]}, "delivery.sms_http[0].url"),
    ({"sms_http": [{**SMS, "url": "ftp://sms.example.net/"}]}, "delivery.sms_http[0].url"),
    ({"sms_http": [{**SMS, "method": "GET"}]}, "delivery.sms_http[0].method"),
    ({"sms_http": [{**SMS, "format": "xml"}]}, "delivery.sms_http[0].format"),
    ({"sms_http": [{**SMS, "ok_status": [99]}]}, "delivery.sms_http[0].ok_status"),
    ({"sms_http": [{**SMS, "timeout": -1}]}, "delivery.sms_http[0].timeout"),
    ({"sms_http": [{**SMS, "body": {"to": "{phone}"}}]}, "delivery.sms_http[0].body.to"),
    ({"sms_http": [{**SMS, "body": {"to": "{to}"}}]}, "delivery.sms_http[0].body"),
    (
        {"sms_http": [{**SMS, "headers": {"Authorization": "Bearer {secret}"}}]},
        "delivery.sms_http[0].headers.Authorization",
    ),
    ({"sms_http": [{**SMS, "secret_file": "secret"}]}, "delivery.sms_http[0].secret_file"),
    ({"sms_email": {"address": "{to}@sms.example.net"}}, "[delivery].sms_email"),
    ({"smtp": [SMTP], "sms_email": {"address": "sms.example.net"}}, "[delivery.sms_email].address"),
    ({"mail_attribute": "mail)(uid=*"}, "[delivery].mail_attribute"),
    ({"mail_subject": "a\nBcc: x"}, "[delivery].mail_subject"),
    ({"smtps": []}, "[delivery].smtps"),
]


@pytest.mark.parametrize(("doc", "key"), BAD, ids=[key for _, key in BAD])
def test_each_error_names_its_key(tmp_path, doc, key):
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, doc)
    assert key in str(caught.value)
    assert "token" not in str(caught.value)


def test_load_config_reads_the_section(tmp_path):
    from otpgate.config import load_config

    (tmp_path / "keyring").write_text("")
    (tmp_path / "otpgate.toml").write_text(
        '[directory]\nprofile = "openldap"\nurls = ["ldap://127.0.0.1"]\nbase_dn = "dc=x"\n'
        'bind_dn = "cn=otpgate,dc=x"\nbind_password = "x"\n'
        '[vault]\nkeyring = "keyring"\n'
        '[[delivery.smtp]]\nhost = "mail.example.org"\nfrom = "otpgate@example.org"\n'
    )
    config = load_config(tmp_path / "otpgate.toml")
    assert config.delivery is not None and config.delivery.smtp[0].host == "mail.example.org"


def test_masks():
    assert mask_phone("+491511234589") == "+\u2022\u2022\u2022\u2022\u202289"
    assert mask_phone("0151 123 45 89") == "\u2022\u2022\u2022\u2022\u202289"
    assert mask_phone("12") == "\u2022" * 5
    assert mask_email("alice@example.org") == "a\u2022\u2022\u2022@example.org"
    assert mask_email("nobody") == "\u2022\u2022\u2022"
    assert mask("bob@example.org") == "b\u2022\u2022\u2022@example.org"
    assert mask("+4412345678") == "+\u2022\u2022\u2022\u2022\u202278"


def test_bodies_and_reprs_keep_the_code_out():
    message = SmsMessage("+491511234589", "alice", "123456")
    assert "123456" not in repr(message)
    doc = {"sms_http": [SMS], "sms_country_prefixes": ["+49"]}
    config = parse_delivery(Section(doc, "delivery"), Path("."))
    assert config is not None
    body, kind = render_body(config.sms_http[0], message)
    assert kind == b"application/json" and b'"text": "123456"' in body
    assert (
        email_address("{to}@sms.example.net", "+49 151 1234589") == "491511234589@sms.example.net"
    )
    failed = Delivery(
        "sms", "+\u2022\u2022\u2022\u2022\u202289", (Attempt("https://a", "status 500"),)
    )
    assert not failed.ok and "status 500" in failed.summary()


def test_only_one_plain_address_is_mailed_to():
    from otpgate.outofband.mail import valid_address
    from otpgate.outofband.scratchmail import scratch_mail

    assert valid_address("alice@example.org") and valid_address("a.b+c@mail.example.org")
    for bad in (
        "Alice <alice@example.org>",
        "a@example.org, b@example.org",
        "a@example.org\r\nBcc: x@example.net",
        "a b@example.org",
        "nobody",
        "a@",
        "bob[x]@corp.example",  # the envelope read it as <bob>
        "bob\x00eve@corp.example",
        "bob@corp.example\n",
        "bøb@corp.example",
        "bob@localhost",  # a host name with no dot: no public domain
        "\"bob\"@corp.example",
    ):
        assert not valid_address(bad), bad
    content = scratch_mail("alice", "ACME", ["12345678", "87654321"], "Codes", 0.0)
    assert "1234 5678" in content.text and "8765 4321" in content.html
    assert "12345678" not in repr(content)


def test_a_ca_file_without_a_certificate_is_refused_when_the_config_is_read(tmp_path):
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n"
                                      "-----END CERTIFICATE-----\n")
    (tmp_path / "secret").write_text("token\n")
    with pytest.raises(ConfigError, match=r"delivery.smtp\[0\].ca_file: .* no PEM certificate"):
        parse_delivery(Section({"smtp": [{**SMTP, "ca_file": "bad.pem"}]}, "delivery"), tmp_path)


def test_the_address_rules_shared_by_the_cli_and_the_help_desk():
    from otpgate.outofband.result import Attempt, Delivery
    from otpgate.outofband.scratchmail import NoMailAddress, mail_address, outcome_text

    assert mail_address("alice", "mail", [b" alice@example.org "]) == "alice@example.org"
    for values, why in (
        (None, "alice has no mail attribute"),
        ([], "alice has no mail attribute"),
        ([b""], "alice has no mail attribute"),
        ([b"a@example.org", b"b@example.org"], "alice has 2 mail values"),
        ([b"Alice <alice@example.org>"], "alice's mail is not one plain e-mail address"),
    ):
        with pytest.raises(NoMailAddress, match=why) as caught:
            mail_address("alice", "mail", values)
        assert "nothing was changed" in str(caught.value)
    sent = Delivery("email", "a•••@example.org", (Attempt("smtp://a:25", "refused"),
                                                   Attempt("smtp://b:25", "")))
    assert outcome_text(sent) == "sent to a•••@example.org by smtp://b:25"
    failed = Delivery("email", "a•••@example.org", (Attempt("smtp://a:25", "refused"),))
    assert outcome_text(failed) == "could not be sent to a•••@example.org (smtp://a:25: refused)"
