"""OpenLDAP sites where users may write their own entry: a rolled-back use state replays nothing.

On OpenLDAP the OTP state lives in the user's own entry unless ``[directory] state_dn`` is
set.  Where the access rules let a user write her own state attribute (here
``homePostalAddress``, the one-time-use state of the "openldap" profile, with ``by self
write``), she saves her stored value with ``ldapsearch``, logs in through the gateway,
writes the saved value back with ``ldapmodify`` bound as herself and replays the code.
The gateway reads the access rules in cn=config as the service account and refuses every
OTP login (LDAP 52) while they let users write their own state, or cannot be read; with
``allow_self_writable_state = true`` it does not look, and the replay works: the risk that
setting names.  With the shipped rules (``schema/acl-openldap.conf``/``.ldif``,
``acl-openldap-config.conf``/``.ldif``) OTP logins work.

Every server is a real slapd on loopback; every client a real ldap-utils or ldap3 bind.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.directory.sync import open_store
from otpgate.otp.oath import hotp
from otpgate.tokens import TokenType
from otpgate.vault import Keyring, keygen
from tests.integration.backends import USER_PASSWORD, Backend
from tests.integration.proxyhelp import Proxy, start_proxy
from tests.netutil import free_port
from tests.servers import Slapd
from tests.logins import appended

PW = USER_PASSWORD
USED = "homePostalAddress"
SELF_WRITES_HOME_ADDRESS = f"""access to attrs={USED}
\tby self write
\tby * break
"""
"""A site that lets users keep their own home address (the service account's write comes
from the shipped rules below it)."""
REFUSED = "users may write their own OTP state"
TWISTD = Path(sys.executable).with_name("twistd")


def backend(server: Slapd, tmp: Path) -> Backend:
    keyring = tmp / "keyring.json"
    if not keyring.exists():
        keygen(keyring, "k1")
    return Backend("slapd", "openldap", server, keyring)


@pytest.fixture(scope="module")
def home_write(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    server = Slapd(tmp_path_factory.mktemp("slapd-home-write"), acl_prefix=SELF_WRITES_HOME_ADDRESS)
    server.start()  # raises (the tests ERROR) if it cannot start: never a skip
    try:
        yield backend(server, tmp_path_factory.mktemp("home-write-keys"))
    finally:
        server.stop()


def admin_enroll(site: Backend, name: str) -> bytes:
    """An HOTP token for ``name``, enrolled by an admin with the CLI's driver."""
    config = site.config()
    store = open_store(config.directory, Keyring.load(site.keyring))
    try:
        key = os.urandom(20)
        token, secret = new_oath_token(config.otp, TokenType.HOTP, key=key)
        store.update(store.resolve(name), lambda s: enroll_change(s, token, secret, 5))
    finally:
        store.directory.close()
    return key


async def saved_as_herself(proxy: Proxy, site: Backend, dn: str) -> bytes:
    """``ldapsearch`` bound as the user: her stored one-time-use state."""
    code, out, err = await proxy.run(
        "/usr/bin/ldapsearch", "-x", "-H", site.server.url, "-D", dn, "-w", PW, "-b", dn,
        "-s", "base", "-LLL", "-o", "ldif-wrap=no", USED,
    )
    assert code == 0, err
    for line in out.splitlines():
        if line.startswith(f"{USED}:: "):
            return base64.b64decode(line.split(":: ", 1)[1])
        if line.startswith(f"{USED}: "):
            return line.split(": ", 1)[1].encode()
    raise AssertionError(f"{dn} cannot read her own {USED}: {out}")


async def written_back_as_herself(proxy: Proxy, site: Backend, dn: str, value: bytes,
                                  tmp_path: Path) -> int:
    """``ldapmodify`` bound as the user: the saved value replaces the stored one."""
    ldif = tmp_path / f"rollback-{os.urandom(3).hex()}.ldif"
    ldif.write_text(f"dn: {dn}\nchangetype: modify\nreplace: {USED}\n"
                    f"{USED}:: {base64.b64encode(value).decode()}\n-\n")
    code, _out, err = await proxy.run(
        "/usr/bin/ldapmodify", "-x", "-H", site.server.url, "-D", dn, "-w", PW, "-f", str(ldif))
    assert code == 0, f"the directory refused her write ({code}): {err}"
    return code


def log_lines() -> tuple[list[str], Any]:
    said: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if REFUSED in (event.get("log_format") or ""):
            said.append(event["log_format"])

    globalLogPublisher.addObserver(observer)
    return said, observer


@pytest_twisted.ensureDeferred
async def test_rollback_where_users_may_write_their_state_replays_nothing(home_write, tmp_path):
    """The attack end to end with the default configuration on a `by self write` site."""
    site = home_write
    said, observer = log_lines()
    proxy = await start_proxy(site, tmp_path, directory={"state_cache_seconds": 0})
    try:
        name, dn = site.new_user("roll")
        key = admin_enroll(site, name)
        saved = await saved_as_herself(proxy, site, dn)
        spent = await proxy.ldap3_bind(dn, PW + hotp(key, 0))
        await written_back_as_herself(proxy, site, dn, saved, tmp_path)
        replayed = await proxy.ldap3_bind(dn, PW + hotp(key, 0))
        assert replayed != (True, 0), "a spent code was accepted again after a rollback"
        # The gateway refused OTP logins on these rules from the first one: nothing was
        # spent, nothing could be replayed; one log line (at startup under twistd, below).
        assert spent == replayed == (False, 52)
        assert len(said) == 1
        result = await proxy.gateway.authenticator.login(
            appended(name, PW + hotp(key, 1), "127.0.0.1", "radius"),
            proxy.gateway.check_password)
        assert result.unavailable and "'by self write' lets a user write her own " \
            f"{USED}" in result.reason and "state_dn" in result.reason
        assert proxy.gateway.state_acl_guard.refusing
    finally:
        globalLogPublisher.removeObserver(observer)
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_with_the_override_the_rollback_replays_which_is_the_risk_it_names(home_write,
                                                                               tmp_path):
    """`allow_self_writable_state = true`: the gateway does not look, and the same attack
    works. Shown so that the setting's name is not taken lightly (docs/SECURITY.md)."""
    site = home_write
    proxy = await start_proxy(site, tmp_path, directory={
        "state_cache_seconds": 0, "allow_self_writable_state": True})
    try:
        assert not proxy.gateway.state_acl_guard.active
        name, dn = site.new_user("risk")
        key = admin_enroll(site, name)
        saved = await saved_as_herself(proxy, site, dn)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)  # spent
        await written_back_as_herself(proxy, site, dn, saved, tmp_path)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)  # replayed
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_rules_opened_later_are_found_at_the_next_check(tmp_path):
    """Safe rules at startup: OTP logins work. An admin then lets users write their home
    address (cn=config changed on the running server): the next check (every 5 minutes;
    here at once) refuses OTP logins, so her rollback replays nothing."""
    with Slapd(tmp_path / "slapd") as server:
        site = backend(server, tmp_path)
        proxy = await start_proxy(site, tmp_path, directory={"state_cache_seconds": 0})
        guard = proxy.gateway.state_acl_guard
        said, observer = log_lines()
        try:
            name, dn = site.new_user("later")
            key = admin_enroll(site, name)
            before = site.raw_values(dn, USED)  # (stands for a value she kept from earlier)
            assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
            assert not guard.refusing and not said
            server.modify_config(
                "dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nadd: olcAccess\n"
                f"olcAccess: {{0}}to attrs={USED} by self write by * break\n")
            guard.recheck_seconds = 0
            now = await saved_as_herself(proxy, site, dn)  # she can read and write it now
            assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (False, 52)
            assert await saved_as_herself(proxy, site, dn) == now  # refused: nothing spent
            await written_back_as_herself(proxy, site, dn, before[0], tmp_path)
            assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 52)
            assert len(said) == 1 and guard.refusing
        finally:
            globalLogPublisher.removeObserver(observer)
            await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_the_shipped_ldif_rules_make_a_self_write_site_safe(tmp_path):
    """A site where users write their own entry and the service account cannot read
    cn=config: OTP logins are refused (52, "may not read cn=config"). The admin applies
    schema/acl-openldap.ldif and acl-openldap-config.ldif (as shipped, the suffix and the
    service account replaced): OTP logins work, the spent code stays spent."""
    server = Slapd(tmp_path / "slapd", schema="otpgate", acl="self-write", config_read="none")
    with server:
        site = backend(server, tmp_path)
        proxy = await start_proxy(site, tmp_path, directory={"state_cache_seconds": 0})
        try:
            proxy.gateway.state_acl_guard.recheck_seconds = 0
            name, dn = site.new_user("ldif")
            key = admin_enroll(site, name)
            assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 52)
            result = await proxy.gateway.authenticator.login(
                appended(name, PW + hotp(key, 0), "127.0.0.1", "web"),
                proxy.gateway.check_password)
            assert "may not read cn=config" in result.reason
            schema = Path(__file__).parents[2] / "schema"
            for ldif in ("acl-openldap.ldif", "acl-openldap-config.ldif"):
                server.modify_config(
                    (schema / ldif).read_text().replace("dc=example,dc=org", server.suffix))
            assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
            assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
            assert not proxy.gateway.state_acl_guard.refusing
            # and she can no longer write it
            attacker = server.connect(dn, PW)
            attacker.raise_exceptions = False
            attacker.modify(dn, {USED: [(ldap3.MODIFY_REPLACE, [b"x"])]})
            assert attacker.result["result"] == 50
            attacker.unbind()
        finally:
            await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_the_shipped_conf_rules_let_otp_logins_through(slapd, tmp_path):
    """The session slapd runs schema/acl-openldap.conf and acl-openldap-config.conf."""
    site = backend(slapd, tmp_path)
    proxy = await start_proxy(site, tmp_path)
    try:
        name, dn = site.new_user("conf")
        key = admin_enroll(site, name)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
        guard = proxy.gateway.state_acl_guard
        assert guard.active and not guard.refusing
    finally:
        await proxy.stop()


def test_twistd_says_it_at_startup_once(home_write, tmp_path):
    """`twistd otpgate` on the `by self write` site: the refusal is in its log as it
    starts (no login needed), one line naming the rule and the fixes."""
    site = home_write
    config = tmp_path / "otpgate.toml"
    config.write_text(f"""{site.server.directory_toml()}
[vault]
keyring = "{site.keyring}"
[ldap_proxy]
listen = ["tcp:{free_port()}:interface=127.0.0.1"]
""")
    log = tmp_path / "twistd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(config)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline and "allow_self_writable_state" not in text:
            time.sleep(0.2)
            text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if REFUSED in line]
        assert len(lines) == 1, text
        assert "'by self write' lets a user write her own homePostalAddress" in lines[0]
        assert "acl-openldap-config.conf" in lines[0] and "state_dn" in lines[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_doctor_reports_what_the_gateway_finds(home_write, tmp_path, capsys):
    from tests.integration.test_cli import Cli

    site = home_write
    doc = Cli(site, tmp_path, capsys).json("doctor", code=1)
    (check,) = [c for c in doc["checks"] if c["area"].startswith("state ACL")]
    assert check["status"] == "fail" and f"lets a user write her own {USED}" in check["detail"]
    assert "refuses every OTP login" in check["detail"] and "state_dn" in check["fix"]
    accepted = Cli(site, tmp_path, capsys, directory={"allow_self_writable_state": True})
    (check,) = [c for c in accepted.json("doctor", code=1)["checks"]
                if c["area"].startswith("state ACL")]
    assert check["status"] == "fail" and "accept OTP logins anyway" in check["detail"]
    with Slapd(tmp_path / "hidden", config_read="none") as server:
        hidden = backend(server, tmp_path)
        (check,) = [c for c in Cli(hidden, tmp_path, capsys).json("doctor", code=1)["checks"]
                    if c["area"].startswith("state ACL")]
        assert check["status"] == "fail" and "may not read cn=config" in check["detail"]
        assert "acl-openldap-config.conf" in check["fix"]
        override = Cli(hidden, tmp_path, capsys, directory={"allow_self_writable_state": True})
        (check,) = [c for c in override.json("doctor")["checks"]
                    if c["area"].startswith("state ACL")]
        assert check["status"] == "warn"
    ok = Cli(backend(home_write.server, tmp_path), tmp_path, capsys,
             directory={"state_dn": home_write.server.state_dn})
    assert not [c for c in ok.json("doctor")["checks"] if c["area"].startswith("state ACL")]
