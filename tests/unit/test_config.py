import tomllib
from pathlib import Path

import pytest

from otpgate.cli import main
from otpgate.codec import Format, Syntax
from otpgate.config import load_config, parse_config
from otpgate.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "deploy" / "otpgate.example.toml"

MINIMAL = {
    "directory": {
        "profile": "openldap",
        "urls": ["ldap://127.0.0.1:389"],
        "base_dn": "dc=example,dc=org",
        "bind_dn": "cn=otpgate,dc=example,dc=org",
        "bind_password": "pw",
    },
    "vault": {"keyring": "keyring.json"},
}


def parse(doc, base=Path("/etc/otpgate")):
    return parse_config(doc, base)


def with_(path, value):
    doc = {k: dict(v) for k, v in MINIMAL.items()}
    section, key = path.split(".", 1)
    doc.setdefault(section, {})[key] = value
    return doc


def test_example_parses_apart_from_files():
    doc = tomllib.loads(EXAMPLE.read_text())
    doc["directory"].pop("ca_file")
    doc["directory"].pop("bind_password_file")
    doc["directory"]["bind_password"] = "x"
    doc["radius"]["clients"][0].pop("secret_file")
    doc["radius"]["clients"][0]["secret"] = "0123456789abcdef"
    doc["delivery"]["smtp"][0].pop("password_file")
    doc["delivery"]["smtp"][0].pop("username")
    doc["delivery"]["sms_http"][0].pop("secret_file")
    doc["delivery"]["sms_http"][0]["headers"] = {"X-Api": "no secret here"}
    config = parse(doc)
    assert config.directory.seed.spec.name == "postalAddress"
    assert config.directory.tokens.spec.syntax is Syntax.OCTET
    assert config.directory.used.spec.max_size == 2048
    assert config.radius.clients[0].mode == "append"
    assert config.delivery is not None
    assert [s.security for s in config.delivery.smtp] == ["starttls", "tls"]
    assert config.delivery.sms_email is not None


def test_the_examples_commented_rollout_blocks_parse():
    """The exemption and grace blocks the example shows commented out are valid as shown."""
    text = EXAMPLE.read_text()
    start = text.index("# [[policy.exempt]]")
    end = text.index("\n[", start)  # the next table
    lines = text[start:end].splitlines()
    block = "\n".join(ln[2:] for ln in lines if ln.startswith(("# [[", "# ")) and (
        ln.startswith("# [[") or " = " in ln.split("#", 2)[1]))
    doc = tomllib.loads(EXAMPLE.read_text())
    doc["directory"].pop("ca_file")
    doc["directory"].pop("bind_password_file")
    doc["directory"]["bind_password"] = "x"
    doc.pop("radius")
    doc.pop("delivery")
    doc["policy"].update(tomllib.loads(block)["policy"])
    policy = parse(doc).policy
    assert [e.kind for e in policy.exemptions] == ["pattern", "group"]
    assert [g.group for g in policy.graces] == ["CN=Staff,OU=Groups,DC=example,DC=com"]


def test_minimal_defaults():
    config = parse(MINIMAL)
    d = config.directory
    assert d.used.spec.name == "homePostalAddress" and d.used.spec.syntax is Syntax.POSTAL
    assert d.seed.format is Format.JSON_ENCRYPTED
    assert d.search_attribute == "uid"
    assert config.keyring == Path("/etc/otpgate/keyring.json")
    assert config.otp.hotp_look_ahead == 10 and config.lockout.max_failures == 5


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("otp.hotp_look_ahead", 101, r"\[otp\]\.hotp_look_ahead: .*above 100"),
        ("otp.totp_window", 65, r"\[otp\]\.totp_window"),
        ("otp.period", 0, r"\[otp\]\.period"),
        ("otp.digits", 9, r"\[otp\]\.digits: digits must be 6 to 8"),
        ("otp.windw", 1, r"\[otp\]\.windw: unknown key"),
        ("otp.algorithm", "md5", r"\[otp\]\.algorithm: 'md5' is not one of sha1, sha256, sha512"),
        ("directory.urls", ["http://x"], r"\[directory\]\.urls: 'http://x' is not an ldap"),
        ("directory.profile", "novell", r"\[directory\]\.profile"),
        ("directory.timeout", "5", r"\[directory\]\.timeout: expected float"),
        ("lockout.max_failures", 0, r"\[lockout\]\.max_failures: must be above 0"),
        ("policy.trusted_networks", ["10.0.0.0/33"], r"\[policy\]\.trusted_networks: '10.0.0.0/33'"),
        ("ldap_proxy.listen", ["ssl:636"], r"\[ldap_proxy\]\.listen: an ssl: listener needs"),
        ("radius.clients", [{"address": "127.0.0.1", "secret": "short"}], r"clients\[0\]\.secret"),
        ("radius.clients", [{"address": "127.0.0.1", "secret": "0123456789abcdef", "mode": "x"}],
         r"clients\[0\]\.mode"),
    ],
)
def test_errors_name_the_key(path, value, message):
    with pytest.raises(ConfigError, match=message):
        parse(with_(path, value))


def test_attribute_mapping_rules():
    doc = with_("directory.formats", {"seed": "json"})
    with pytest.raises(ConfigError, match="seeds are always encrypted"):
        parse(doc)
    for role in ("tokens", "used", "inventory"):  # no plain value can be trusted
        with pytest.raises(ConfigError, match=rf"\[directory\.formats\]\.{role}: plain 'json'"):
            parse(with_("directory.formats", {role: "json"}))
    doc = with_("directory.formats", {"used": "binary"})
    with pytest.raises(ConfigError, match="'binary' needs an octet-string"):
        parse(doc)
    doc = with_("directory.attributes", {"used": "description"})
    with pytest.raises(ConfigError, match="not an attribute otpgate knows"):
        parse(doc)
    doc = with_("directory.attributes", {"used": {"name": "description", "syntax": "directory",
                                                  "max_size": 1024}})
    assert parse(doc).directory.used.spec.max_size == 1024
    doc = with_("directory.attributes", {"used": "postalAddress"})
    with pytest.raises(ConfigError, match="three different attributes"):
        parse(doc)


def test_missing_required_and_password_file(tmp_path):
    doc = {k: dict(v) for k, v in MINIMAL.items()}
    del doc["directory"]["bind_password"]
    with pytest.raises(ConfigError, match=r"\[directory\]\.bind_password .*never binds anonymously"):
        parse(doc)
    (tmp_path / "pw").write_text("s3cret\n")
    doc["directory"]["bind_password_file"] = "pw"
    assert parse(doc, tmp_path).directory.bind_password == "s3cret"
    doc["directory"]["bind_password_file"] = "missing"
    with pytest.raises(ConfigError, match="bind_password_file: cannot read"):
        parse(doc, tmp_path)
    with pytest.raises(ConfigError, match=r"\[vault\]\.keyring is required"):
        parse({"directory": MINIMAL["directory"]})


def test_bad_file_is_one_line_from_the_cli(tmp_path, capsys):
    cfg = tmp_path / "otpgate.toml"
    cfg.write_text("[otp]\nhotp_look_ahead = 500\n")
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "urls" in err
    cfg.write_text("this is = = not toml")
    assert main(["check-config", "--config", str(cfg)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_ad_needs_a_state_container_or_an_explicit_risk():
    """On a default AD every user may write their own state attributes (rollback -> replay):
    the AD profile refuses to keep state there unless the admin says the right was removed."""
    ad = {**MINIMAL, "directory": {**MINIMAL["directory"], "profile": "ad",
                                   "urls": ["ldaps://dc1.example.org"]}}
    with pytest.raises(ConfigError, match=r"\[directory\]\.state_dn is required on Active Directory"):
        parse(ad)
    ad["directory"]["state_dn"] = "OU=otpgate state,DC=example,DC=org"
    config = parse(ad).directory
    assert config.state_dn == "OU=otpgate state,DC=example,DC=org"
    assert config.state_classes == ("top", "organizationalRole")
    del ad["directory"]["state_dn"]
    ad["directory"]["allow_self_writable_state"] = True
    assert parse(ad).directory.state_dn is None
    ad["directory"]["state_dn"] = ad["directory"]["inventory_dn"] = "OU=x,DC=example,DC=org"
    with pytest.raises(ConfigError, match="state_dn.*inventory_dn"):
        parse(ad)


def test_openldap_keeps_state_in_the_user_entry_unless_told():
    assert parse(MINIMAL).directory.state_dn is None
    doc = {**MINIMAL, "directory": {**MINIMAL["directory"], "state_dn": "ou=otp,dc=example,dc=org"}}
    assert parse(doc).directory.state_classes == ("top", "organizationalRole", "extensibleObject")


# -- clear text: one rule for the gateway, the proxy's upstream and the CLI ----------------


@pytest.mark.parametrize(
    "url", ["ldap://127.0.0.1:389", "ldap://127.8.9.1", "ldap://[::1]:389", "ldap://localhost"]
)
def test_plain_ldap_to_loopback_is_allowed(url):
    assert parse(with_("directory.urls", [url])).directory.urls == (url,)


@pytest.mark.parametrize("url", ["ldap://dc1.example.com", "ldap://192.0.2.10:389", "ldap://[2001:db8::1]"])
def test_plain_ldap_to_another_host_is_refused(url):
    with pytest.raises(ConfigError, match=r"\[directory\]\.urls: .*clear text.*ldaps://.*start_tls = true"):
        parse(with_("directory.urls", [url]))
    doc = with_("directory.urls", [url])
    doc["directory"]["start_tls"] = True
    assert parse(doc).directory.start_tls  # StartTLS (verified) makes it fine
    assert parse(with_("directory.urls", [url.replace("ldap:", "ldaps:")]))


def test_plain_write_url_and_discover_follow_the_same_rule():
    with pytest.raises(ConfigError, match=r"\[directory\]\.write_url: .*clear text"):
        parse(with_("directory.write_url", "ldap://dc1.example.com"))
    doc = with_("directory.write_url", "discover")
    doc["directory"]["profile"] = "ad"
    doc["directory"]["state_dn"] = "OU=otpgate state,DC=example,DC=org"
    with pytest.raises(ConfigError, match=r"\[directory\]\.write_url: 'discover'.*ldaps://"):
        parse(doc)
    doc["directory"]["urls"] = ["ldaps://dc1.example.com"]
    assert parse(doc).directory.write_url == "discover"


AD_FILE = """\
[directory]
profile = "ad"
urls = ["ldap://127.0.0.1:389"]
base_dn = "DC=example,DC=org"
bind_dn = "CN=otpgate,OU=Service,DC=example,DC=org"
bind_password = "pw"
state_dn = "OU=otpgate state,DC=example,DC=org"
{more}
[vault]
keyring = "keyring.json"
"""


def test_the_implicit_ad_discover_follows_the_plain_ldap_rule_too(tmp_path, capsys):
    """write_url unset on AD means "discover": the PDC emulator is found by name and reached
    like the first URL, so plain ldap:// to loopback would become plain ldap:// to a remote
    DC.  The default is refused like the explicit value."""
    path = tmp_path / "otpgate.toml"
    path.write_text(AD_FILE.format(more=""))
    with pytest.raises(ConfigError, match=r"\[directory\]\.write_url: 'discover' \(unset on AD"):
        load_config(path)
    assert main(["check-config", "--config", str(path)]) == 2
    assert "ldaps://" in capsys.readouterr().err
    for more in ('start_tls = true', 'write_url = "ldap://127.0.0.1:389"'):
        path.write_text(AD_FILE.format(more=more))
        assert load_config(path).directory.write_url in ("discover", "ldap://127.0.0.1:389")
    path.write_text(AD_FILE.format(more="").replace("ldap://127.0.0.1:389", "ldaps://dc1"))
    assert load_config(path).directory.write_url == "discover"


def test_the_cli_driver_refuses_what_the_config_refuses():
    from otpgate.directory.ldapdata import LdapUrl
    from otpgate.directory.sync import connect
    from otpgate.errors import DirectoryError

    directory = parse(MINIMAL).directory
    with pytest.raises(DirectoryError, match="clear text"):
        connect(LdapUrl.parse("ldap://192.0.2.10"), directory, None, None)


# -- the proxy: TLS for binds, SASL, queue -------------------------------------------------


def test_proxy_tls_for_binds_defaults():
    assert parse(MINIMAL).ldap_proxy.require_tls_for_binds is False
    assert parse(MINIMAL).policy.allow_sasl_for_exempt is False
    assert parse(MINIMAL).ldap_proxy.max_queued_requests == 100
    tls = {"listen": ["tcp:389"], "cert_file": "c.pem", "key_file": "k.pem"}
    doc = {**MINIMAL, "ldap_proxy": tls}
    assert parse(doc).ldap_proxy.require_tls_for_binds is True  # a certificate: TLS required
    doc = {**MINIMAL, "ldap_proxy": {**tls, "require_tls_for_binds": False}}
    assert parse(doc).ldap_proxy.require_tls_for_binds is False
    local = {**MINIMAL, "ldap_proxy": {"listen": ["tcp:10389:interface=127.0.0.1"]}}
    assert parse(local).ldap_proxy.require_tls_for_binds is False


def test_proxy_clear_text_binds_from_the_network_need_an_explicit_choice():
    doc = {**MINIMAL, "ldap_proxy": {"listen": ["tcp:389:interface=0.0.0.0"]}}
    with pytest.raises(ConfigError, match=r"\[ldap_proxy\]\.listen: .*clear text.*cert_file"):
        parse(doc)
    doc = {**MINIMAL, "ldap_proxy": {"listen": ["tcp:389"], "require_tls_for_binds": False}}
    assert parse(doc).ldap_proxy.require_tls_for_binds is False
    doc = {**MINIMAL, "ldap_proxy": {"listen": ["tcp:389"], "require_tls_for_binds": True}}
    with pytest.raises(ConfigError, match=r"\[ldap_proxy\]\.require_tls_for_binds: needs cert"):
        parse(doc)
    with pytest.raises(ConfigError, match=r"\[ldap_proxy\]\.max_queued_requests: must be above 0"):
        parse(with_("ldap_proxy.max_queued_requests", 0))


def test_otp_delimiter_is_a_pipeline_setting_and_the_old_key_still_works(capsys, tmp_path):
    assert parse({**MINIMAL, "otp": {"otp_delimiter": ","}}).otp.otp_delimiter == ","
    old = parse({**MINIMAL, "ldap_proxy": {"otp_delimiter": ","}})
    assert old.otp.otp_delimiter == ","
    assert old.deprecations and "[otp].otp_delimiter" in old.deprecations[0]
    both = {**MINIMAL, "ldap_proxy": {"otp_delimiter": ","}, "otp": {"otp_delimiter": ";"}}
    with pytest.raises(ConfigError, match=r"\[otp\]\.otp_delimiter: also set as \[ldap_proxy\]"):
        parse(both)
    with pytest.raises(ConfigError, match=r"\[otp\]\.otp_delimiter: one character or empty"):
        parse({**MINIMAL, "otp": {"otp_delimiter": ",,"}})
    path = tmp_path / "otpgate.toml"
    path.write_text(
        '[directory]\nprofile = "openldap"\nurls = ["ldap://127.0.0.1:389"]\n'
        'base_dn = "dc=x"\nbind_dn = "cn=s,dc=x"\nbind_password = "p"\n'
        '[vault]\nkeyring = "k.json"\n[ldap_proxy]\notp_delimiter = ","\n'
    )
    assert main(["check-config", "--config", str(path)]) == 0
    assert "deprecated: [ldap_proxy].otp_delimiter" in capsys.readouterr().err


def test_each_default_is_stated_once_in_its_dataclass():
    """The parser takes every default from the section's dataclass: an empty file gives
    exactly the dataclasses' defaults."""
    from otpgate.auth.config import LockoutConfig, OtpConfig, PolicyConfig
    from otpgate.ldapproxy.config import LdapProxyConfig
    from otpgate.radius.config import RadiusConfig
    from otpgate.web.config import WebConfig

    config = parse(MINIMAL)
    assert config.otp == OtpConfig() and config.lockout == LockoutConfig()
    assert config.policy == PolicyConfig() and config.radius == RadiusConfig()
    assert config.ldap_proxy == LdapProxyConfig() and config.web == WebConfig()


def test_ad_pins_otp_state_to_the_pdc_emulator_by_default():
    """Attack: with OTP state on whichever DC answers, a forced failover to a DC that has
    not replicated the last write accepts a code twice."""
    ad = {**MINIMAL, "directory": {**MINIMAL["directory"], "profile": "ad",
                                   "state_dn": "OU=s,DC=example,DC=org",
                                   "urls": ["ldaps://dc1.example.org", "ldaps://dc2.example.org"]}}
    assert parse(ad).directory.write_url == "discover"  # the default on AD: the PDC emulator
    ad["directory"]["write_url"] = "ldaps://dc2.example.org"
    assert parse(ad).directory.write_url == "ldaps://dc2.example.org"
    ad["directory"]["urls"] = ["ldaps://dc1.example.org"]
    del ad["directory"]["write_url"]
    assert parse(ad).directory.write_url == "discover"  # one DC too: it finds that one


def test_openldap_unpinned_multi_provider_needs_an_explicit_override():
    assert parse(MINIMAL).directory.write_url is None
    assert parse(MINIMAL).directory.allow_unpinned_multi_provider is False
    doc = with_("directory.allow_unpinned_multi_provider", True)
    assert parse(doc).directory.allow_unpinned_multi_provider is True
    with pytest.raises(ConfigError, match=r"allow_unpinned_multi_provider"):
        parse(with_("directory.allow_unpinned_multi_provider", "yes"))
