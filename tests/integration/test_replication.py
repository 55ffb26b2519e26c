"""OpenLDAP multi-provider replication: OTP state pinned to one provider, or refused.

Two providers (serverID 1 and 2, syncrepl both ways) and a read-only consumer of the
first (``tests/servers/replicated.py``).  Gateways whose reads (user search, password
binds, pass-through) go to different servers race the same codes:

* pinned (``write_url`` = provider A for both): every code is accepted exactly once;
* unpinned, each gateway writing OTP state to its own provider (the override set):
  measured and printed, not asserted (docs/SECURITY.md has the numbers);
* unpinned without the override: OTP logins are refused (``unavailable``), exempt binds
  are not; ``otpgate doctor`` says FAIL and how to fix it;
* the pinned provider stops: OTP logins fail closed with ``unavailable`` (52), exempt binds
  keep working on the other servers, and OTP logins resume when it is back, no restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.logins import appended
from otpgate.otp.oath import hotp
from otpgate.vault import keygen
from tests.integration.backends import USER_PASSWORD, Backend
from tests.integration.proxyhelp import start_proxy
from tests.integration.race_worker import enroll_hotp
from tests.integration.race_worker import race as run_race
from tests.integration.test_cli import Cli
from tests.netutil import free_port
from tests.servers import MultiProvider

RACES = 50
TWISTD = Path(sys.executable).with_name("twistd")
OK_REASONS = ("wrong OTP", "OTP already used")


@pytest.fixture(scope="module")
def repl(multi_provider: MultiProvider, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    keyring = tmp_path_factory.mktemp("repl-keys") / "keyring.json"
    keygen(keyring, "k1")
    return Backend("multi-provider", "openldap", multi_provider.a, keyring)


def directory(urls: list[str], write_url: str | None = None, **more: Any) -> dict[str, Any]:
    """Plain LDAP to the loopback servers (each slapd has its own test CA)."""
    section: dict[str, Any] = {"urls": urls, "start_tls": False, "timeout": 2, **more}
    if write_url is not None:
        section["write_url"] = write_url
    return section


async def enrolled_user(repl: Backend, mp: MultiProvider, prefix: str) -> tuple[str, str, bytes]:
    """A user with an HOTP token, written on provider A and replicated everywhere."""
    name, dn = repl.new_user(prefix)
    key = os.urandom(20)
    await enroll_hotp(repl.config(directory([mp.a.url], mp.a.url)), name, key)
    mp.wait_converged()
    return name, dn, key


def race(repl: Backend, name: str, key: bytes, sections: list[dict[str, Any]]) -> dict[int, list]:
    """Two gateway processes, one per directory section, log in with the same code RACES
    times (password+code, the password bound on each gateway's own read servers)."""
    docs = [{"directory": repl.directory_section(**s), "vault": {"keyring": str(repl.keyring)}}
            for s in sections]
    return run_race(docs, name, key, RACES, USER_PASSWORD)


def accepted_per_code(collected: dict[int, list]) -> dict[int, int]:
    accepted = {c: 0 for c in range(RACES)}
    for outcomes in collected.values():
        assert len(outcomes) == RACES
        for counter, ok, _reason in outcomes:
            accepted[counter] += ok
    return accepted


@pytest_twisted.ensureDeferred
async def test_pinned_gateways_reading_different_servers_accept_every_code_once(
    repl, multi_provider
):
    mp = multi_provider
    name, _dn, key = await enrolled_user(repl, mp, "pinned")
    # reads: provider B for one gateway, the consumer for the other; OTP state: provider A
    collected = race(repl, name, key, [directory([mp.b.url], mp.a.url),
                                       directory([mp.consumer.url], mp.a.url)])
    accepted = accepted_per_code(collected)
    for outcomes in collected.values():
        for _counter, ok, reason in outcomes:
            assert ok or reason in OK_REASONS or reason.startswith("ConcurrentUpdate"), reason
    twice = sum(n > 1 for n in accepted.values())
    print(f"pinned: {RACES} races, {twice} accepted twice, "
          f"{sum(n == 1 for n in accepted.values())} once")
    assert all(n == 1 for n in accepted.values()), {c: n for c, n in accepted.items() if n != 1}


@pytest_twisted.ensureDeferred
async def test_unpinned_gateways_on_two_providers_measured(repl, multi_provider):
    """The risk the override names: each gateway keeps OTP state on its own provider."""
    mp = multi_provider
    name, _dn, key = await enrolled_user(repl, mp, "unpinned")
    risky = {"allow_unpinned_multi_provider": True}
    collected = race(repl, name, key, [directory([mp.a.url], **risky),
                                       directory([mp.b.url], **risky)])
    accepted = accepted_per_code(collected)
    twice = sum(n > 1 for n in accepted.values())
    never = sum(n == 0 for n in accepted.values())
    print(f"unpinned (allow_unpinned_multi_provider): {RACES} races, {twice} accepted twice, "
          f"{never} never")
    mp.wait_converged()


@pytest_twisted.ensureDeferred
async def test_unpinned_multi_provider_refuses_otp_logins_not_exempt_binds(
    repl, multi_provider, tmp_path
):
    mp = multi_provider
    name, dn, key = await enrolled_user(repl, mp, "refused")
    exempt, _ = repl.new_user("exempt")
    exempt_dn = f"uid={exempt},{mp.a.people_dn}"
    mp.wait_converged()
    proxy = await start_proxy(repl, tmp_path, directory([mp.a.url, mp.b.url]),
                              policy={"exempt_dns": [exempt_dn]})
    said: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        text = event.get("log_format") or ""
        if "multi-provider replication and no [directory] write_url" in text:
            said.append(text)

    globalLogPublisher.addObserver(observer)
    try:
        guard = proxy.gateway.replication_guard
        assert guard.active
        for counter in range(2):  # refused every time, and the code is not spent
            ok, code = await proxy.ldap3_bind(dn, USER_PASSWORD + hotp(key, counter))
            assert (ok, code) == (False, 52)
        assert guard.refusing and len(said) == 1  # one log line, not one per login
        request = appended(name, USER_PASSWORD + hotp(key, 0), "127.0.0.1", "test")
        result = await proxy.gateway.authenticator.login(
            request, proxy.gateway.check_password)
        assert result.unavailable and "multi-provider" in result.reason
        assert "write_url" in result.reason
        assert await proxy.ldap3_bind(exempt_dn, USER_PASSWORD) == (True, 0)
    finally:
        globalLogPublisher.removeObserver(observer)
        await proxy.stop()
    # pinned, the same user logs in with the first code: nothing was spent while refused
    pinned = await start_proxy(repl, tmp_path, directory([mp.b.url], mp.a.url))
    try:
        assert await pinned.ldap3_bind(dn, USER_PASSWORD + hotp(key, 0)) == (True, 0)
        assert not pinned.gateway.replication_guard.active
    finally:
        await pinned.stop()


@pytest_twisted.ensureDeferred
async def test_pinned_provider_down_fails_closed_and_comes_back(repl, multi_provider, tmp_path):
    mp = multi_provider
    _name, dn, key = await enrolled_user(repl, mp, "outage")
    exempt, _ = repl.new_user("exempt")
    exempt_dn = f"uid={exempt},{mp.a.people_dn}"
    mp.wait_converged()
    policy = {"exempt_dns": [exempt_dn]}
    proxies = [
        await start_proxy(repl, tmp_path, directory([server.url], mp.a.url), policy=policy)
        for server in (mp.b, mp.consumer)
    ]
    counter = 0
    try:
        for proxy in proxies:  # both up: a code each
            assert await proxy.ldap3_bind(dn, USER_PASSWORD + hotp(key, counter)) == (True, 0)
            counter += 1
        mp.a.stop()
        for proxy in proxies:
            assert await proxy.ldap3_bind(dn, USER_PASSWORD + hotp(key, counter)) == (False, 52)
            assert await proxy.ldap3_bind(exempt_dn, USER_PASSWORD) == (True, 0)
        mp.a.start()
        for proxy in proxies:  # no restart: the next request reconnects to A
            assert await proxy.ldap3_bind(dn, USER_PASSWORD + hotp(key, counter)) == (True, 0)
            counter += 1
    finally:
        if not mp.a.running:
            mp.a.start()
        for proxy in proxies:
            await proxy.stop()
    mp.wait_converged()


def test_doctor_fails_unpinned_multi_provider_and_passes_pinned(repl, multi_provider,
                                                               tmp_path, capsys):
    mp = multi_provider
    unpinned = Cli(repl, tmp_path, capsys, directory=directory([mp.a.url, mp.b.url]))
    doc = unpinned.json("doctor", code=1)
    (check,) = [c for c in doc["checks"] if c["area"] == "replication"]
    assert check["status"] == "fail" and "multi-provider" in check["detail"]
    assert "server ids 1, 2" in check["detail"] and "write_url" in check["fix"]
    # provider B lets the service account read its cn=config, A does not
    assert f"{mp.b.url}: olcMultiProvider (mirror mode) is on" in check["detail"]
    assert f"{mp.a.url}: olcMultiProvider" not in check["detail"]
    text = unpinned("doctor", code=1)
    assert "[FAIL] replication: unsafe for OTP state" in text
    # a slapd.conf given by path counts too (for a cn=config the service account cannot read)
    doc = unpinned.json("doctor", "--slapd-config", str(mp.a.conf_file), code=1)
    (check,) = [c for c in doc["checks"] if c["area"] == "replication" and c["status"] == "fail"]
    assert f"file {mp.a.conf_file}: olcMultiProvider" in check["detail"]
    pinned = Cli(repl, tmp_path, capsys, directory=directory([mp.b.url], mp.a.url))
    doc = pinned.json("doctor")
    (check,) = [c for c in doc["checks"] if c["area"] == "replication"]
    assert check["status"] == "ok" and f"pinned to {mp.a.url}" in check["detail"]


def test_twistd_says_it_at_startup_once(repl, multi_provider, tmp_path):
    """`twistd otpgate` unpinned on the multi-provider pair: the refusal is in the log as the
    gateway starts (no login needed), one line."""
    mp = multi_provider
    config = tmp_path / "otpgate.toml"
    config.write_text(f"""
[directory]
profile = "openldap"
urls = ["{mp.a.url}", "{mp.b.url}"]
base_dn = "{mp.a.suffix}"
bind_dn = "{mp.a.service_dn}"
bind_password = "{mp.a.service_password}"
[vault]
keyring = "{repl.keyring}"
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
        while time.monotonic() < deadline and "OTP state is pinned" not in text:
            time.sleep(0.2)
            text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if "multi-provider replication and no" in line]
        assert len(lines) == 1, text
        assert "server ids 1, 2" in lines[0] and "write_url" in lines[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _healthz(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_healthz_is_unavailable_while_the_guard_refuses_otp_state(repl, multi_provider,
                                                                   tmp_path):
    """`twistd otpgate` unpinned on the multi-provider pair refuses every OTP login: its
    /healthz says so (503, a fixed reason), so that a load balancer takes it out; pinned to
    one provider, the same gateway is healthy."""
    from tests.browser.portal import run_portal

    mp = multi_provider
    for sub in ("unpinned", "pinned"):
        (tmp_path / sub).mkdir()
    with run_portal(repl, tmp_path / "unpinned", twistd=True,
                    directory=directory([mp.a.url, mp.b.url])) as portal:
        status, body = _healthz(portal.url)
        assert (status, body) == (503, b"unavailable: OTP state writes refused "
                                       b"(replication guard)\n")
        assert mp.a.url.encode() not in body and mp.b.url.encode() not in body
    with run_portal(repl, tmp_path / "pinned", twistd=True,
                    directory=directory([mp.a.url, mp.b.url], mp.a.url)) as portal:
        assert _healthz(portal.url) == (200, b"ok\n")
