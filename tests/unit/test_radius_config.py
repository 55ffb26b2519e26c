"""[radius] configuration: keys, defaults and errors that name the key."""

import tomllib
from pathlib import Path

import pytest

from otpgate.config import parse_config, parse_radius_listen
from otpgate.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "deploy" / "otpgate.example.toml"
BASE = {
    "directory": {"profile": "openldap", "urls": ["ldap://127.0.0.1"], "base_dn": "dc=x",
                  "bind_dn": "cn=s,dc=x", "bind_password": "pw"},
    "vault": {"keyring": "k.json"},
}
CLIENT = {"address": "192.0.2.0/24", "secret": "0123456789abcdef"}


def radius(**section):
    return parse_config({**BASE, "radius": section}, Path("/etc/otpgate")).radius


def test_defaults():
    r = radius(clients=[CLIENT])
    assert r.listen == () and r.duplicate_cache_seconds == 30 and r.status_server
    assert r.unavailable_reply == "none" and r.challenge_message == "Enter your one-time code"
    c = r.clients[0]
    assert c.mode == "append" and c.require_message_authenticator
    assert not c.allow_chap and not c.allow_mschapv2


def test_example_radius_section():
    doc = tomllib.loads(EXAMPLE.read_text())
    doc["radius"]["clients"][0].pop("secret_file")
    doc["radius"]["clients"][0]["secret"] = "0123456789abcdef"
    r = parse_config({**BASE, "radius": doc["radius"]}, Path("/etc")).radius
    assert r.listen == ("0.0.0.0:1812",) and r.reject_delay == 1.0


def test_secret_file(tmp_path):
    (tmp_path / "nas.secret").write_text("from-a-file-0123456789\n")
    doc = {**BASE, "radius": {"clients": [{"address": "10.0.0.1", "secret_file": "nas.secret"}]}}
    assert parse_config(doc, tmp_path).radius.clients[0].secret == b"from-a-file-0123456789"


@pytest.mark.parametrize("spec,host,port", [("0.0.0.0:1812", "0.0.0.0", 1812),
                                             ("[::]:1812", "::", 1812), ("127.0.0.1:0", "127.0.0.1", 0)])
def test_listen(spec, host, port):
    assert parse_radius_listen(spec) == (host, port)


@pytest.mark.parametrize(
    "section,message",
    [
        ({"listen": ["1812"]}, r"\[radius\]\.listen: '1812' is not host:port"),
        ({"listen": ["radius.example:1812"]}, r"\[radius\]\.listen: .*not an IP address"),
        ({"listen": ["0.0.0.0:70000"]}, r"\[radius\]\.listen"),
        ({"unavailable_reply": "maybe"}, r"\[radius\]\.unavailable_reply: 'maybe' is not one of"),
        ({"duplicate_cache_seconds": 0}, r"\[radius\]\.duplicate_cache_seconds: must be above 0"),
        ({"challenge_message": ""}, r"\[radius\]\.challenge_message"),
        ({"max_attributes": 5000}, r"\[radius\]\.max_attributes"),
        ({"rate_limit_burst": -1}, r"\[radius\]\.rate_limit_burst"),
        ({"clients": [CLIENT, dict(CLIENT)]}, r"radius\.clients\[1\]\.address: .* already clients\[0\]"),
        ({"clients": [{**CLIENT, "allow_pap": True}]}, r"radius\.clients\[0\]\.allow_pap: unknown key"),
        ({"clients": [{**CLIENT, "address": "300.1.1.1"}]}, r"radius\.clients\[0\]\.address"),
        ({"clients": [{**CLIENT, "secret": "x", "secret_file": "y"}]}, r"give secret or secret_file"),
        ({"nope": 1}, r"\[radius\]\.nope: unknown key"),
    ],
)
def test_errors_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        radius(**section)
