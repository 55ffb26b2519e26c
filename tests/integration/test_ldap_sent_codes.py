"""Codes sent by e-mail/SMS through the LDAP bind proxy, with real clients and servers.

The proxy runs in-process in front of slapd (stock schemas) and Samba AD, as in
test_proxy.py; every bind is a real ``ldapwhoami``.  E-mail goes through a real aiosmtpd
(STARTTLS and AUTH, tests/servers/mailserver.py) whose messages the tests read the codes
from; SMS through a real HTTP gateway on loopback.  The audit trail is the gateway's JSON
file, /metrics its web listener.  A password ending in ``,email`` or ``,sms`` asks for a
code: the bind is refused (49) and its diagnostic says where the code went; the next bind
carries the code.  The limits (cooldown, hourly limit), a mail server that is down, a
destination the client tries to supply and a number outside ``sms_country_prefixes`` are
exercised end to end.  The last test runs ``twistd otpgate`` with two proxy processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.web import resource, server

from otpgate.tokens import Token, TokenType
from otpgate.vault import keygen
from otpgate.web.service import web_services
from tests.integration.backends import USER_PASSWORD
from tests.integration.proxyhelp import Proxy, start_proxy
from tests.netutil import free_port
from tests.sentcodes import enroll_proven
from tests.servers import SambaDC, make_server_tls
from tests.servers.mailserver import MailServer, smtp_tables

PW = USER_PASSWORD
DOT = "\u2022"
BOTH = pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
CODE = re.compile(r"one-time code for [^:\n]*: (\d{6,8})")
SENT = 'otpgate_codes_sent_total{channel="email",outcome="%s"}'
TWISTD = Path(sys.executable).with_name("twistd")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_server_tls(tmp_path_factory.mktemp("smtp-tls"), dns_names=["localhost"])


@pytest.fixture
def mail(tls):
    with MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as server:
        yield server


# -- the gateway, its audit file, the users ---------------------------------------------------


async def start(backend: Any, tmp_path: Path, delivery: dict[str, Any], **sections: Any) -> Proxy:
    """The proxy with ``,`` between password and code or trigger word, ``delivery`` as
    given, and the audit trail in ``tmp_path/audit.json`` (JSON, written at once)."""
    logging = {"file": str(tmp_path / "audit.json"), "json": True, "flush_seconds": 0}
    proxy = await start_proxy(
        backend, tmp_path, otp={"otp_delimiter": ","}, delivery=delivery, logging=logging,
        **sections,
    )  # fmt: skip
    proxy.gateway.audit.start()
    return proxy


def mail_delivery(tmp_path: Path, tls: Any, port: int, **rules: Any) -> dict[str, Any]:
    return {"smtp": smtp_tables(tmp_path, tls, port), **rules}


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.json").read_text().splitlines()
    return [e for e in map(json.loads, filter(None, lines)) if e.get("event") == "auth"]


def sends(tmp_path: Path) -> list[dict[str, Any]]:
    """The ``send`` field of every audited login that made or refused a send."""
    return [e["send"] for e in audit(tmp_path) if "send" in e]


def audit_holds(tmp_path: Path, *texts: str) -> bool:
    """Whether any audited field (the time apart) holds one of ``texts``."""
    fields = [json.dumps({k: v for k, v in e.items() if k != "time"}) for e in audit(tmp_path)]
    return any(t in f for t in texts for f in fields)


def new_user(backend: Any, prefix: str, **values: str) -> tuple[str, str, str]:
    """A user whose entry holds ``mail`` = <name>@example.org (and ``values``), set by the
    directory's administrator; (login name, DN, mail)."""
    name, dn = backend.new_user(prefix)
    address = f"{name}@example.org"
    set_values(backend, dn, mail=address, **values)
    return name, dn, address


def set_values(backend: Any, dn: str, **values: str) -> None:
    import ldap3

    conn = backend.admin()
    try:
        changes = {a: [(ldap3.MODIFY_REPLACE, [v])] for a, v in values.items()}
        assert conn.modify(dn, changes), conn.result
    finally:
        conn.unbind()


async def enroll(proxy: Proxy, dn: str, kind: TokenType = TokenType.EMAIL) -> Token:
    """An e-mail or SMS token, written through the gateway's own store."""
    attribute = "mail" if kind is TokenType.EMAIL else "mobile"
    return await enroll_proven(proxy.gateway, dn, kind, attribute)


async def bind(proxy: Proxy, backend: Any, name: str, password: str) -> tuple[bool, str]:
    """A real ``ldapwhoami`` bind through the proxy: (bound, stderr).  Samba answers the Who
    Am I? that follows a successful bind with an error of its own: what counts is the bind."""
    code, out, err = await proxy.whoami(name, password)
    if code == 0:
        assert out.strip().lower().startswith("dn:"), out
        return True, err
    if isinstance(backend.server, SambaDC) and "ldap_bind" not in err:
        assert "1.3.6.1.4.1.4203.1.11.3) not supported" in err, (code, err)  # after the bind
        return True, err
    assert code == 49 and "ldap_bind: Invalid credentials (49)" in err, (code, err)
    return False, err


def code_of(message: Any) -> str:
    body = message.message.get_body(("plain",)).get_content()
    match = CODE.search(body)
    assert match, body
    return match.group(1)


def masked(address: str) -> str:
    return f"{address[0]}{DOT * 3}@{address.split('@', 1)[1]}"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


# -- e-mail ----------------------------------------------------------------------------------


@BOTH
@pytest_twisted.ensureDeferred
async def test_trigger_then_the_code_binds_once(backend, tmp_path, tls, mail):
    proxy = await start(backend, tmp_path, mail_delivery(tmp_path, tls, mail.port))
    try:
        _name, dn, address = new_user(backend, "oobmail")
        await enroll(proxy, dn)
        bound, err = await bind(proxy, backend, dn, PW + ",email")
        assert not bound and f"Code sent by e-mail to {masked(address)}" in err, err
        (message,) = mail.wait_for(1)
        assert message.rcpt_tos == [address] and message.message["To"] == address
        code = code_of(message)
        assert (await bind(proxy, backend, dn, PW + "," + code))[0]
        again, err = await bind(proxy, backend, dn, PW + "," + code)  # single use
        assert not again and "invalid credentials" in err and "Code sent" not in err
        wrong = "000000" if code != "000000" else "111111"
        assert not (await bind(proxy, backend, dn, PW + "," + wrong))[0]
        assert len(mail.messages) == 1  # a bind that carries a code never sends one
        events = audit(tmp_path)
        assert [e["outcome"] for e in events] == ["challenge", "accept", "reject", "reject"]
        assert events[0]["send"]["outcome"] == "sent"
        assert events[0]["send"]["destination"] == masked(address)
        assert "already used" in events[2]["reason"]
        assert not audit_holds(tmp_path, code, PW, address)
    finally:
        await proxy.stop()


@BOTH
@pytest_twisted.ensureDeferred
async def test_a_wrong_password_with_the_trigger_sends_nothing(backend, tmp_path, tls, mail):
    proxy = await start(backend, tmp_path, mail_delivery(tmp_path, tls, mail.port))
    try:
        _name, dn, _address = new_user(backend, "oobwrong")
        await enroll(proxy, dn)
        bound, err = await bind(proxy, backend, dn, "not-" + PW + ",email")
        assert not bound and "invalid credentials" in err and "Code sent" not in err
        assert mail.messages == []
        (event,) = audit(tmp_path)
        assert event["outcome"] == "reject" and event["reason"].startswith("no code sent:")
        assert "send" not in event
    finally:
        await proxy.stop()


async def start_metrics(proxy: Proxy) -> Any:
    """The gateway's web listener (/metrics) in this process; returns its services."""
    services = web_services(proxy.gateway, proxy.gateway.config, reactor)
    for s in services:
        s.startService()
    return services


async def scrape(port: int) -> str:
    def get() -> str:
        url = f"http://127.0.0.1:{port}/metrics"
        return str(urllib.request.urlopen(url, timeout=10).read().decode())

    return str(await threads.deferToThread(get))


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@BOTH
@pytest_twisted.ensureDeferred
async def test_cooldown_and_hourly_limit_are_audited_and_counted(backend, tmp_path, tls, mail):
    web = free_port()
    rules = {"send_cooldown": 2, "sends_per_hour": 2}
    proxy = await start(
        backend, tmp_path, mail_delivery(tmp_path, tls, mail.port, **rules),
        web={"listen": [f"tcp:{web}:interface=127.0.0.1"], "metrics_networks": ["127.0.0.1/32"]},
    )  # fmt: skip
    services = await start_metrics(proxy)
    try:
        _name, dn, _address = new_user(backend, "ooblimit")
        await enroll(proxy, dn)
        answers = []
        answers.append(await bind(proxy, backend, dn, PW + ",email"))  # sent
        answers.append(await bind(proxy, backend, dn, PW + ",email"))  # the same code again
        (first,) = (code_of(m) for m in mail.wait_for(1))
        assert (await bind(proxy, backend, dn, PW + "," + first))[0]  # spent
        answers.append(await bind(proxy, backend, dn, PW + ",email"))  # cooldown
        await sleep(2.5)
        answers.append(await bind(proxy, backend, dn, PW + ",email"))  # sent (2 of 2)
        second = code_of(mail.wait_for(2)[1])
        assert (await bind(proxy, backend, dn, PW + "," + second))[0]
        await sleep(2.5)
        answers.append(await bind(proxy, backend, dn, PW + ",email"))  # hourly limit
        assert [bound for bound, _ in answers] == [False] * 5
        said = [
            "Code already sent" if "Code already sent" in err else "Code sent" in err
            for _, err in answers
        ]
        assert said == [True, "Code already sent", False, True, False], answers
        await sleep(0.5)
        assert len(mail.messages) == 2
        events = [e for e in audit(tmp_path) if "send" in e]
        outcomes = [e["send"]["outcome"] for e in events]
        assert outcomes == ["sent", "repeat", "limited", "sent", "limited"]
        assert "cooldown" in events[2]["reason"] and events[2]["outcome"] == "reject"
        assert "hourly limit (2 per hour)" in events[4]["reason"]
        text = await scrape(web)
        assert metric(text, SENT % "sent") == 2, text
        assert metric(text, SENT % "limited") == 2, text
        assert metric(text, SENT % "failed") == 0
    finally:
        for s in reversed(services):
            await defer.maybeDeferred(s.stopService)
        await proxy.stop()


@BOTH
@pytest_twisted.ensureDeferred
async def test_smtp_down_fails_the_bind_and_leaves_no_code(backend, tmp_path, tls):
    dead = free_port()  # nothing listens there
    proxy = await start(backend, tmp_path, mail_delivery(tmp_path, tls, dead))
    try:
        _name, dn, _address = new_user(backend, "oobdown")
        token = await enroll(proxy, dn)
        bound, err = await bind(proxy, backend, dn, PW + ",email")
        assert not bound and "invalid credentials" in err and "Code sent" not in err
        (event,) = audit(tmp_path)
        assert event["outcome"] == "reject" and event["send"]["outcome"] == "failed"
        assert "code not sent" in event["reason"]
        store = proxy.gateway.store
        state = store.decode(await store.resolve(dn, fresh=True))
        use = state.used.use_of(token.id)
        assert use.code == b"" and use.request == b""  # withdrawn: nothing outstanding
        assert len(state.used.sends) == 1  # the attempt still counts towards the limits
        assert [t.id for t in state.tokens] == [token.id]
    finally:
        await proxy.stop()


@BOTH
@pytest_twisted.ensureDeferred
async def test_a_destination_typed_by_the_client_is_never_used(backend, tmp_path, tls, mail):
    proxy = await start(backend, tmp_path, mail_delivery(tmp_path, tls, mail.port))
    try:
        name, dn, address = new_user(backend, "oobevil")
        await enroll(proxy, dn)
        evil = "evil@example.org"
        for bind_name, password in [
            (dn, PW + ",email:" + evil),
            (dn, PW + ",email," + evil),
            (dn, PW + "," + evil),
            (dn, PW + ",email " + evil),
            (evil, PW + ",email"),  # an address as the bind name: nobody
            (f"mail={evil},{dn}", PW + ",email"),  # a DN that carries one: nobody either
        ]:
            bound, err = await bind(proxy, backend, bind_name, password)
            assert not bound and "Code sent" not in err, (bind_name, password, err)
        assert mail.messages == []
        # the user's own login name, an address on AD (userPrincipalName): the code goes to
        # the entry's mail value all the same
        bound, err = await bind(proxy, backend, backend.upn(name), PW + ",email")
        assert not bound and f"Code sent by e-mail to {masked(address)}" in err, err
        (message,) = mail.wait_for(1)
        assert message.rcpt_tos == [address] and message.message["To"] == address
        assert all(m.rcpt_tos == [address] for m in mail.messages)
    finally:
        await proxy.stop()


# -- SMS --------------------------------------------------------------------------------------


class SmsGateway(resource.Resource):
    """An HTTP SMS gateway on loopback that accepts every message and keeps what it got."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []

    def render_POST(self, request: Any) -> bytes:
        self.received.append(json.loads(request.content.read()))
        request.setResponseCode(202)
        return b'{"status":"queued"}'


@BOTH
@pytest_twisted.ensureDeferred
async def test_sms_goes_to_the_entrys_own_number(backend, tmp_path):
    gateway = SmsGateway()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.Site(gateway))
    sms = {
        "url": f"http://127.0.0.1:{port.getHost().port}/sms",
        "body": {"to": "{to}", "text": "Your code: {code}", "ref": "{user}"},
        "ok_body": "queued",
        "timeout": 5,
    }
    proxy = await start(backend, tmp_path, {"sms_http": [sms], "sms_country_prefixes": ["+49"]})
    try:
        _name, dn, _address = new_user(backend, "oobsms", mobile="+49 151 2345 6789")
        await enroll(proxy, dn, TokenType.SMS)
        bound, err = await bind(proxy, backend, dn, PW + ",sms")
        assert not bound and f"Code sent by SMS to +{DOT * 5}89" in err, err
        (got,) = gateway.received
        assert got["to"] == "+4915123456789"  # normalised, as the gateway needs it
        code = got["text"].removeprefix("Your code: ")
        assert (await bind(proxy, backend, dn, PW + "," + code))[0]
        assert not (await bind(proxy, backend, dn, PW + "," + code))[0]
        # a number outside sms_country_prefixes: nothing is sent, the bind says nothing
        _name, abroad, _address = new_user(backend, "oobabroad", mobile="+44 7700 900123")
        await enroll(proxy, abroad, TokenType.SMS)
        bound, err = await bind(proxy, backend, abroad, PW + ",sms")
        assert not bound and "Code sent" not in err and "invalid credentials" in err
        assert len(gateway.received) == 1
        outcomes = [s["outcome"] for s in sends(tmp_path)]
        assert outcomes == ["sent", "refused"]
        assert "sms_country_prefixes" in audit(tmp_path)[-1]["reason"]
        assert not audit_holds(tmp_path, "15123456789", "7700", "900123", code)
    finally:
        await port.stopListening()
        await proxy.stop()


@pytest.mark.parametrize("backend", ["samba"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_user_who_rewrites_her_own_mobile_gets_no_code(backend, tmp_path):
    """The insider with a phished password: on AD, SELF may write its own ``mobile`` (the
    Personal Information property set), so she points it at her own phone and asks for a
    code.  The token is bound to the number its enrollment proved: nothing is sent."""
    import ldap3

    gateway = SmsGateway()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.Site(gateway))
    sms = {
        "url": f"http://127.0.0.1:{port.getHost().port}/sms",
        "body": {"to": "{to}", "text": "Your code: {code}"},
        "ok_body": "queued",
        "timeout": 5,
    }
    proxy = await start(backend, tmp_path, {"sms_http": [sms], "sms_country_prefixes": ["+49"]})
    try:
        _name, dn, _address = new_user(backend, "oobself", mobile="+49 151 2345 6789")
        await enroll(proxy, dn, TokenType.SMS)
        own = backend.server.connect(dn, PW)  # the user herself, with her password alone
        try:
            changed = own.modify(dn, {"mobile": [(ldap3.MODIFY_REPLACE, ["+49 170 6666666"])]})
            assert changed, own.result  # AD's default: SELF writes its own mobile
        finally:
            own.unbind()
        bound, err = await bind(proxy, backend, dn, PW + ",sms")
        assert not bound and "Code sent" not in err
        assert gateway.received == []
        (refused,) = sends(tmp_path)
        assert refused["outcome"] == "refused"
        assert "enroll the token again" in audit(tmp_path)[-1]["reason"]
        assert not audit_holds(tmp_path, "6666666", "2345 6789")
        # the number changed back by the administrator: codes go out again
        set_values(backend, dn, mobile="+49 151 2345 6789")
        bound, err = await bind(proxy, backend, dn, PW + ",sms")
        assert not bound and "Code sent by SMS" in err and len(gateway.received) == 1
    finally:
        await port.stopListening()
        await proxy.stop()


# -- two proxy processes (twistd) ---------------------------------------------------------------


ENROLL = """
import dataclasses
import sys
from pathlib import Path
from twisted.internet import task, defer
from otpgate.admin.sentcodes import new_sent_token, sent_enroll_change
from otpgate.auth.oob import destination_binding
from otpgate.config import load_config
from otpgate.service import Gateway
from otpgate.tokens import TokenType
from otpgate.vault import Keyring

async def main(reactor):
    config = load_config(Path(sys.argv[1]))
    gw = Gateway(config, Keyring.load(config.keyring), reactor)
    for dn in sys.argv[2:]:
        user = await gw.store.resolve(dn)
        (address,) = await gw.entry_values(user.dn, "mail")
        token, secret = new_sent_token(TokenType.EMAIL, "mail", 6)
        bound = destination_binding(secret.key, address.decode().strip())
        token = dataclasses.replace(token, bound=bound)
        await gw.store.update(user, lambda s: sent_enroll_change(s, token, secret))
    gw.close()

task.react(lambda r: defer.ensureDeferred(main(r)))
"""


def test_two_proxy_processes_send_and_count(slapd, tmp_path, tls, mail):
    """``processes = 2``: a trigger bind is answered the same by either process (each reads
    the limits from the directory, none caches the trigger), and /metrics in the main
    process sums the sends of both."""
    port, web = free_port(), free_port()
    keygen(tmp_path / "keyring.json", "k1")
    (tables,) = smtp_tables(tmp_path, tls, mail.port)
    smtp = "\n".join(f"{k} = {json.dumps(v)}" for k, v in tables.items())
    config = tmp_path / "otpgate.toml"
    config.write_text(f"""
{slapd.directory_toml()}
[vault]
keyring = "keyring.json"
[otp]
otp_delimiter = ","
[ldap_proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
processes = 2
bind_cache_seconds = 30
[web]
listen = ["tcp:{web}:interface=127.0.0.1"]
metrics_networks = ["127.0.0.1/32"]
[delivery]
send_cooldown = 60
[[delivery.smtp]]
{smtp}
""")
    names = [f"oobproc{os.getpid()}x{i}" for i in range(4)]
    users = [slapd.add_user(n, PW, attributes={"mail": f"{n}@example.org"}) for n in names]
    enrolled = subprocess.run([sys.executable, "-c", ENROLL, str(config), *users],
                              capture_output=True, text=True, timeout=60)
    assert enrolled.returncode == 0, enrolled.stderr
    proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(config)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def whoami(dn: str, password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ldapwhoami", "-x", "-H", f"ldap://127.0.0.1:{port}", "-D", dn, "-w", password],
            capture_output=True, text=True, timeout=20,
            env={**os.environ, "LDAPCONF": "/dev/null", "LDAPRC": "/nonexistent"})

    def scrape() -> str:
        return str(urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=10)
                   .read().decode())

    def workers() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"otpgate.worker {config}"],
                              capture_output=True, text=True).stdout.split()

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (workers() and _listening(port)):
            time.sleep(0.2)
        assert workers() and _listening(port), "gateway or worker did not start"
        time.sleep(1)
        for i, dn in enumerate(users):
            for _ in range(3):  # three connections: sent, then the same code pointed to
                run = whoami(dn, PW + ",email")
                assert run.returncode == 49, run.stderr
            codes = [code_of(m) for m in mail.wait_for(i + 1)]
            assert len(codes) == i + 1
            assert whoami(dn, PW + "," + codes[i]).returncode == 0
            assert whoami(dn, PW + ",email").returncode == 49  # after a success: no cache hit
        assert len(mail.messages) == 4
        assert [m.rcpt_tos for m in mail.messages] == [[f"{n}@example.org"] for n in names]
        deadline = time.monotonic() + 15  # workers write their counters every second
        text = scrape()
        by_process = 'otpgate_process_authentications_total{process="%s"}'

        def counted(text: str) -> tuple[float, ...]:
            sends = tuple(metric(text, SENT % o) for o in ("sent", "repeat", "limited"))
            return (*sends, sum(metric(text, by_process % p) for p in ("main", "1")))

        # Each process's counters arrive on their own second, and a worker's write may fall
        # between its send counter and its authentication counter: wait for all of them.
        while counted(text) != (4, 8, 4, 20) and time.monotonic() < deadline:
            time.sleep(0.3)
            text = scrape()
        assert metric(text, SENT % "sent") == 4, text
        assert metric(text, SENT % "repeat") == 8, text
        assert metric(text, SENT % "limited") == 4, text  # spent, then within the cooldown
        main, worker = metric(text, by_process % "main"), metric(text, by_process % "1")
        assert main > 0 and worker > 0 and main + worker == 20, (main, worker)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
