"""Attacks on the web portal, performed over HTTP against the portal on loopback and the tests'
real directories (slapd, Samba AD).  Each test performs the attack and checks that it fails.

- password-only sign-in of a user with a token, where policy needs no OTP (trusted network,
  not in a required group): no self-service at all; a typed code is always verified;
- a client forging X-Forwarded-For / Forwarded to reach /metrics or escape the rate limit;
  a trusted proxy's header is used; TLS terminated at the proxy gives Secure cookies and HSTS;
- a help-desk member resetting, revoking, unlocking, issuing scratch lists for or assigning
  tokens to administrators and other help-desk members;
- a 100 MB request body (Content-Length and chunked);
- the per-name sign-in limit dodged by typing one account's other names;
- Prometheus label cardinality from token ids.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.directory.sync import SyncInventory, open_store
from otpgate.tokens import Secret, Token, TokenType
from otpgate.vault import Keyring
from tests.browser.portal import WebClient, run_portal
from tests.integration.backends import USER_PASSWORD, make_backend
from tests.integration.test_web_browser import code, enroll_directly

_groups = itertools.count(1)


def new_group(backend: Any, members: list[str]) -> str:
    tag = f"webatk{os.getpid()}x{int(time.time()) % 10**6}x{next(_groups)}"
    if backend.is_ad:
        return str(backend.server.create_group(tag, members))
    return str(backend.server.add_group(tag, members))


def raw_state(backend: Any, name: str) -> tuple[Any, ...]:
    """The user's stored OTP values exactly as in the directory (seed, tokens, used)."""
    config = backend.config()
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        user = store.resolve(name)
        return (user.seed, tuple(sorted(user.tokens)), tuple(sorted(user.used)))
    finally:
        store.directory.close()


def enroll_many(backend: Any, name: str, n: int) -> list[bytes]:
    """``n`` TOTP tokens beside each other (enroll_directly replaces the software token)."""
    config = backend.config()
    store = open_store(config.directory, Keyring.load(backend.keyring))
    keys = []
    try:
        for i in range(n):
            token, secret = new_oath_token(config.otp, TokenType.TOTP, label=f"phone {i}")
            store.update(store.resolve(name), lambda s, t=token, k=secret: enroll_change(
                s, t, k, n, replace_software=False))
            keys.append(secret.key)
    finally:
        store.directory.close()
    return keys


def token_ids(backend: Any, name: str) -> list[str]:
    config = backend.config()
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        return [t.id for t in store.decode(store.resolve(name)).tokens]
    finally:
        store.directory.close()


def audit_lines(portal: Any, *fragments: str) -> list[str]:
    time.sleep(0.1)
    return [
        line for line in portal.audit.read_text().splitlines()
        if all(f in line for f in fragments)
    ]


# -- 1. password-only sign-in never opens self-service for a user with a token ----------------


def test_password_only_sign_in_gets_no_self_service(
    slapd: Any, tmp_path: Path, request: Any
) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    name, _dn = backend.new_user("pwonly")
    key = enroll_directly(backend, name)
    newcomer, _ = backend.new_user("pwnew")
    policy = {
        # Policy says this user needs no OTP from here: a trusted network, and a required
        # group the user is not in.  The portal must not care.
        "trusted_networks": ["127.0.0.0/8"],
        "require_otp_groups": [f"cn=nobody,ou=groups,{backend.server.suffix}"],
    }
    web = {"password_only_enrollment_networks": ["127.0.0.0/8"]}
    with run_portal(backend, tmp_path, web, policy=policy) as portal:
        before = raw_state(backend, name)
        [token_id] = token_ids(backend, name)
        attacker = WebClient(portal)
        # The password alone: refused, with a message asking for the code.
        assert attacker.sign_in(name, USER_PASSWORD) == 401
        status, text = attacker.request("POST", "/signin", {
            "username": name, "password": USER_PASSWORD, "otp": ""})
        assert status == 401 and "one-time code" in text
        assert not attacker.cookies
        # Whatever it then posts is refused (there is no session to post in).
        for path, fields in (("/scratch", {}), ("/enroll", {"label": "evil"}),
                             ("/revoke", {"token": token_id}),
                             ("/enroll/confirm", {"code": "123456"})):
            status, text = attacker.request("POST", path, {"csrf": "x", **fields})
            assert status in (303, 403), (path, status)
            assert 'id="codes"' not in text and 'id="secret"' not in text
        status, _ = attacker.request("GET", "/me")
        assert status == 303
        assert raw_state(backend, name) == before, "password-only requests changed the state"
        assert audit_lines(portal, "'reject'", "the user has a token: a code is required")

        # A user with no token, policy "no OTP needed", no code: only the enroll-only session.
        fresh = WebClient(portal)
        assert fresh.sign_in(newcomer, USER_PASSWORD) == 303
        for path in ("/scratch", "/revoke"):
            assert fresh.post(path, {"token": "x"})[0] == 403
        assert raw_state(backend, newcomer)[1] == ()

        # Password + code: verified and spent even though policy needs no OTP here (not taken
        # for part of the password, which would fail the bind).
        user = WebClient(portal)
        otp = code(key)
        assert user.sign_in(name, USER_PASSWORD, otp) == 303, portal.log.read_text()[-2000:]
        assert audit_lines(portal, "'accept'", f"'{token_id}'", "password+OTP accepted")
        replay = WebClient(portal)
        assert replay.sign_in(name, USER_PASSWORD, otp) == 401  # spent
        status, text = user.post("/scratch")
        assert status == 200 and text.count("<li>") == 10
        status, text = user.post("/enroll", {"label": "second"})
        assert status == 200 and 'id="secret"' in text
        status, text = user.post("/revoke", {"token": token_id})
        assert status == 200 and "Revoked" in text
        assert token_id not in token_ids(backend, name)


def test_typed_code_is_required_even_for_exempt_accounts(
    slapd: Any, tmp_path: Path, request: Any
) -> None:
    """An exempt account (service account) has no way into self-service with its password; a
    user without a token who types a code is refused ('no token enrolled')."""
    backend = make_backend("slapd-stock", request, tmp_path)
    name, dn = backend.new_user("exempt")
    bare, bare_dn = backend.new_user("exnotoken")
    policy = {"exempt_dns": [dn, bare_dn]}
    with run_portal(backend, tmp_path, {}, policy=policy) as portal:
        key = enroll_directly(backend, name)
        client = WebClient(portal)
        assert client.sign_in(dn, USER_PASSWORD) == 401
        assert client.sign_in(name, USER_PASSWORD) == 401
        assert client.sign_in(bare, USER_PASSWORD, "123456") == 401
        assert audit_lines(portal, "'reject'", "no token enrolled")
        assert client.sign_in(name, USER_PASSWORD, code(key)) == 303


# -- 2. client addresses behind a reverse proxy -----------------------------------------------


def test_forged_forwarding_headers_are_ignored_without_trusted_proxies(
    slapd: Any, tmp_path: Path, request: Any
) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    web = {"metrics_networks": ["10.0.0.0/8"], "sign_in_attempts_per_minute": 3}
    with run_portal(backend, tmp_path, web) as portal:
        forger = WebClient(portal, headers={"X-Forwarded-For": "10.1.1.1",
                                            "Forwarded": "for=10.1.1.1"})
        assert forger.request("GET", "/metrics")[0] == 403
        statuses = []
        for i in range(4):  # a new forged address and a new name each time: still one client
            forger.headers["X-Forwarded-For"] = f"198.51.100.{i + 1}"
            statuses.append(forger.sign_in(f"nobody{i}", "wrong", "123456"))
        assert statuses == [401, 401, 401, 429]
        forger.request("GET", "/signin")
        assert "strict-transport-security" not in forger.last_headers


def test_trusted_proxy_forwarding(slapd: Any, tmp_path: Path, request: Any) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    name, _dn = backend.new_user("proxied")
    key = enroll_directly(backend, name)
    web = {
        "metrics_networks": ["10.0.0.0/8", "127.0.0.2/32"],
        "sign_in_attempts_per_minute": 3,
        "trusted_proxies": ["127.0.0.2/32"],
        "tls_terminated_by_proxy": True,
    }
    with run_portal(backend, tmp_path, web) as portal:
        # A client that is not the proxy forges the header: ignored.
        forger = WebClient(portal, "127.0.0.1", {"X-Forwarded-For": "10.1.1.1"})
        assert forger.request("GET", "/metrics")[0] == 403
        statuses = []
        for i in range(4):
            forger.headers["X-Forwarded-For"] = f"10.1.1.{i + 1}"
            statuses.append(forger.sign_in(f"nobody{i}", "wrong", "123456"))
        assert statuses == [401, 401, 401, 429]
        # The proxy (127.0.0.2) says who the client is: used for rights and for rate limits.
        proxy = WebClient(portal, "127.0.0.2")
        assert proxy.request("GET", "/metrics")[0] == 200  # the proxy host itself
        assert proxy.request("GET", "/metrics",
                             headers={"X-Forwarded-For": "10.1.1.1"})[0] == 200
        # The client's own forgery, left of what the proxy appended, is worth nothing.
        assert proxy.request("GET", "/metrics",
                             headers={"X-Forwarded-For": "10.1.1.1, 198.51.100.7"})[0] == 403
        # A malformed header through the proxy: not the proxy's rights either.
        assert proxy.request("GET", "/metrics",
                             headers={"X-Forwarded-For": "10.1.1.1, bogus"})[0] == 403
        # Only the configured header is read (a client may send the other one itself).
        assert proxy.request("GET", "/metrics",
                             headers={"Forwarded": "for=198.51.100.7"})[0] == 200
        # Distinct clients behind the proxy each get their own sign-in budget.
        statuses = [
            proxy.request("POST", "/signin",
                          {"username": f"other{i}", "password": "wrong", "otp": "123456"},
                          headers={"X-Forwarded-For": f"198.51.100.{i + 10}"})[0]
            for i in range(6)
        ]
        assert statuses == [401] * 6
        # TLS terminated at the proxy: __Host- cookie, Secure, HSTS, on this plain listener.
        user = WebClient(portal, "127.0.0.2", {"X-Forwarded-For": "203.0.113.77"})
        assert user.sign_in(name, USER_PASSWORD, code(key)) == 303
        cookie = user.last_headers["Set-Cookie"]
        assert cookie.startswith("__Host-otpgate=") and "; Secure" in cookie
        assert user.last_headers["Strict-Transport-Security"].startswith("max-age=")
        assert user.request("GET", "/me")[0] == 200
    audit = portal.audit.read_text()
    assert "client='203.0.113.77'" in audit and "client='198.51.100.15'" in audit
    assert "client='10.1.1.4'" not in audit  # the forger was counted as 127.0.0.1
    assert "unusable forwarding header" in portal.log.read_text()


# -- 3. the help desk cannot touch administrators or other help-desk members ------------------


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_helpdesk_cannot_change_admins_or_helpdesk_members(
    backend: Any, tmp_path: Path
) -> None:
    desk, desk_dn = backend.new_user("hdself")
    desk2, desk2_dn = backend.new_user("hdpeer")
    admin, admin_dn = backend.new_user("hdadmin")
    plain, _plain_dn = backend.new_user("hdplain")
    desk_key = enroll_directly(backend, desk)
    for name in (desk2, admin, plain):
        enroll_directly(backend, name)
    desk_group = new_group(backend, [desk_dn, desk2_dn])
    targets = [admin, desk2, desk]
    members = [admin_dn]
    if backend.is_ad:  # nested: a member of a group that is a member of the admin group
        nested, nested_dn = backend.new_user("hdnested")
        enroll_directly(backend, nested)
        members.append(new_group(backend, [nested_dn]))
        targets.append(nested)
    admin_group = new_group(backend, members)
    inventory_dn = backend.inventory_dn()
    serial = f"HD{os.getpid()}{int(time.time() * 1000) % 10**7}"
    config = backend.config({"inventory_dn": inventory_dn})
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        SyncInventory.open(store).add(
            Token(id=os.urandom(4).hex(), type=TokenType.HOTP, created=0, serial=serial,
                  label="fob"), Secret(os.urandom(20)))
    finally:
        store.directory.close()
    web = {"helpdesk_groups": [desk_group]}
    with run_portal(backend, tmp_path, web, policy={"admin_groups": [admin_group]},
                    directory={"inventory_dn": inventory_dn}) as portal:
        client = WebClient(portal)
        assert client.sign_in(desk, USER_PASSWORD, code(desk_key)) == 303
        csrf = client.csrf("/helpdesk")
        for target in targets:
            before = raw_state(backend, target)
            [token] = token_ids(backend, target)
            status, text = client.request("GET", "/helpdesk?q=" + urllib.parse.quote(target))
            assert status == 200 and 'id="protected"' in text and "hd-reset" not in text
            for action, extra in (("reset", {}), ("scratch", {}), ("unlock", {}),
                                  ("revoke", {"token": token}), ("assign", {"serial": serial})):
                status, text = client.post(f"/helpdesk/{action}", {"user": target, **extra},
                                           csrf=csrf)
                assert status == 403, (target, action, status, text[:400])
                assert 'id="codes"' not in text
                assert raw_state(backend, target) == before, (target, action)
            refused = audit_lines(portal, "'refused'", f"user='{target}'")
            assert len(refused) == 5, refused
        assert audit_lines(portal, "'refused'", "help-desk reset of an administrator")
        assert audit_lines(portal, "'refused'", "help-desk scratch of a help-desk member")
        # The inventory token was not handed out: it goes to an ordinary user.
        status, text = client.post("/helpdesk/assign", {"user": plain, "serial": serial},
                                   csrf=csrf)
        assert status == 200 and f"Assigned {serial}" in text
        status, text = client.post("/helpdesk/reset", {"user": plain}, csrf=csrf)
        assert status == 200 and "Done: reset" in text
        assert token_ids(backend, plain) == []


def test_helpdesk_rights_end_when_removed_from_the_group(
    slapd: Any, tmp_path: Path, request: Any
) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    desk, desk_dn = backend.new_user("hdgone")
    plain, _ = backend.new_user("hdvictim")
    key = enroll_directly(backend, desk)
    enroll_directly(backend, plain)
    group = new_group(backend, [desk_dn])
    with run_portal(backend, tmp_path, {"helpdesk_groups": [group]}) as portal:
        client = WebClient(portal)
        assert client.sign_in(desk, USER_PASSWORD, code(key)) == 303
        csrf = client.csrf("/helpdesk")
        conn = backend.admin()
        try:
            conn.modify(group, {"member": [("MODIFY_REPLACE", [backend.server.admin_dn])]})
        finally:
            conn.unbind()
        before = raw_state(backend, plain)
        assert client.post("/helpdesk/reset", {"user": plain}, csrf=csrf)[0] == 403
        assert raw_state(backend, plain) == before


# -- 4. request bodies are capped while they arrive -------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _upload(port: int, head: bytes, body_chunks: Any, limit: int,
            wait_first: float = 0.0) -> tuple[bytes, int, float]:
    """Send ``head`` then body chunks until the server answers or closes (or ``limit`` bytes
    went out); returns (what the server sent, body bytes sent, seconds).  ``wait_first``:
    seconds to wait for an answer to the headers alone before sending any body."""
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sent = 0
    reply = b""
    try:
        sock.sendall(head)
        select.select([sock], [], [], wait_first)
        sock.setblocking(False)
        for chunk in body_chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            view = memoryview(chunk)
            while view:
                readable, writable, _ = select.select([sock], [sock], [], 10)
                if readable:
                    break
                if not writable:
                    raise AssertionError("the server stopped reading but did not answer")
                try:
                    n = sock.send(view)
                except (BrokenPipeError, ConnectionResetError):
                    view = view[:0]
                    readable = [sock]
                    break
                sent += n
                view = view[n:]
            if readable or sent >= limit:
                break
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        except (ConnectionResetError, TimeoutError):
            pass
    finally:
        sock.close()
    return reply, sent, time.monotonic() - start


def test_100_megabyte_body_is_refused_while_it_arrives(
    slapd: Any, tmp_path: Path, request: Any
) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    total = 100 * 1024 * 1024
    block = b"a" * 65536

    def lazily(n: int) -> Any:  # never holds the body: one 64 KiB block, yielded n times
        for _ in range(n // len(block)):
            yield block

    def chunked(n: int) -> Any:
        frame = b"%x\r\n" % len(block) + block + b"\r\n"
        for _ in range(n // len(block)):
            yield frame
        yield b"0\r\n\r\n"

    with run_portal(backend, tmp_path) as portal:
        pid = portal.process.pid
        port = int(portal.url.rsplit(":", 1)[1])
        rss_before = _rss_kib(pid)
        head = (b"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % total)
        reply, sent, seconds = _upload(port, head, lazily(total), total, wait_first=5)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        assert sent == 0, f"the server let {sent} body bytes in before answering"
        head = (b"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n")
        reply, sent, seconds = _upload(port, head, chunked(total), total)
        assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes before closing"
        assert reply == b"" or reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        assert seconds < 20
        assert _rss_kib(pid) - rss_before < 32 * 1024, "the portal buffered the body"
        # Still serving, and a normal form still works.
        client = WebClient(portal)
        assert client.sign_in("nobody", "wrong", "123456") == 401


# -- 5. the sign-in limit counts per directory entry, whatever name was typed ------------------


@pytest.mark.parametrize("backend", ["samba"], indirect=True)
def test_sign_in_limit_per_entry_across_name_forms(backend: Any, tmp_path: Path) -> None:
    name, dn = backend.new_user("ratealice")
    other, _ = backend.new_user("rateother")
    forms = [name, f"{backend.server.domain}\\{name}", backend.upn(name), dn]
    with run_portal(backend, tmp_path, {"sign_in_attempts_per_minute": 10}) as portal:
        statuses = []
        for i in range(10):  # each attempt from its own address: the per-client limit is not it
            client = WebClient(portal, f"127.0.0.{20 + i}")
            statuses.append(client.sign_in(forms[i % 4], "wrong", "123456"))
        assert statuses == [401] * 10
        for j, form in enumerate(forms):
            client = WebClient(portal, f"127.0.0.{40 + j}")
            assert client.sign_in(form, "wrong", "123456") == 429, form
        # Another account is not affected.
        assert WebClient(portal, "127.0.0.50").sign_in(other, "wrong", "123456") == 401
    assert len(audit_lines(portal, "web sign-in rate limit")) == 4


# -- 6. metrics have bounded labels --------------------------------------------------------------


def test_metrics_series_do_not_grow_with_tokens(slapd: Any, tmp_path: Path, request: Any) -> None:
    backend = make_backend("slapd-stock", request, tmp_path)
    desk, desk_dn = backend.new_user("mdesk")
    user, _ = backend.new_user("mtokens")
    desk_key = enroll_directly(backend, desk)
    keys = enroll_many(backend, user, 5)
    group = new_group(backend, [desk_dn])

    def scrape(portal: Any) -> list[str]:
        status, text = WebClient(portal).request("GET", "/metrics")
        assert status == 200
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    with run_portal(backend, tmp_path, {"helpdesk_groups": [group]}) as portal:
        tokens = token_ids(backend, user)
        # Logins with every one of the user's tokens.
        for key in keys:
            assert WebClient(portal).sign_in(user, USER_PASSWORD, code(key)) == 303
        desk_client = WebClient(portal)
        assert desk_client.sign_in(desk, USER_PASSWORD, code(desk_key)) == 303
        csrf = desk_client.csrf("/helpdesk")
        status, _ = desk_client.post("/helpdesk/revoke", {"user": user, "token": tokens[0]},
                                     csrf=csrf)
        assert status == 200
        first = scrape(portal)
        for token in tokens[1:]:
            status, _ = desk_client.post("/helpdesk/revoke", {"user": user, "token": token},
                                         csrf=csrf)
            assert status == 200
        last = scrape(portal)
    def keys(lines: list[str]) -> set[str]:
        return {line.rsplit(" ", 1)[0] for line in lines}

    assert keys(last) == keys(first), keys(last) ^ keys(first)
    text = "\n".join(last)
    for token in tokens:
        assert token not in text
    assert user not in text and desk not in text
    assert 'otpgate_web_actions_total{action="helpdesk-revoke"} 5.0' in text



# -- 7. a label with terminal escapes is a form error, not a crash -------------------------------


def test_control_characters_in_a_label_are_refused_cleanly(
    slapd: Any, tmp_path: Path, request: Any
) -> None:
    """An OSC 52 sequence in a self-service label (it would reach an admin's terminal through
    `otpgate show`) is refused with a message; the portal keeps working."""
    backend = make_backend("slapd-stock", request, tmp_path)
    name, _dn = backend.new_user("oscl")
    key = enroll_directly(backend, name)
    with run_portal(backend, tmp_path, {}) as portal:
        client = WebClient(portal)
        assert client.sign_in(name, USER_PASSWORD, code(key)) == 303
        status, text = client.post("/enroll", {"label": "phone\x1b]52;c;ZXZpbA==\x07"})
        assert status == 200 and "Label refused" in text
        status, text = client.post("/enroll", {"label": "work phone"})
        assert status == 200 and "Enroll" in text
