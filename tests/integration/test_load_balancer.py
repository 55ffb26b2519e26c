"""Two gateways (twistd) behind a real HAProxy in TCP mode with ``send-proxy-v2`` and
``option ldap-check``, on a slapd of their own (it is stopped and started here).

- the gateways see the client's address (audit, limits) through the PROXY header;
- a PROXY header from a peer not in ``proxy_protocol_from`` is refused, and a listed peer
  without one is refused too;
- HAProxy's LDAP check and ``/healthz`` say "up" only while the directory answers;
- one gateway killed (SIGKILL) under load (ldapbind_load.py's kind of client, reconnecting)
  code: HAProxy moves the traffic, only the requests in flight fail, no code is accepted
  twice (the in-flight code is retried on the other gateway, as an application would).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from otpgate import ber
from otpgate.ldapproxy.proxyheader import V2_SIGNATURE
from otpgate.otp.oath import hotp
from otpgate.vault import keygen
from tests.integration.test_processes import ENROLL
from tests.netutil import free_port
from tests.servers.haproxy import HAPROXY, HAProxy
from tests.servers.slapd import Slapd

TWISTD = Path(sys.executable).with_name("twistd")
KEY = bytes.fromhex("3132333435363738393031323334353637383930")
USERS = 24
CONC = 8
LOAD_SECONDS = 9.0
KILL_AFTER = 3.0


class _Client:
    """The load client's LDAP side, on otpgate's own BER (ldapbind_load.py's worker holds one
    connection and stops at the first error; the failover worker below reconnects)."""

    @staticmethod
    def bind_request(message_id: int, dn: str, password: str) -> bytes:
        return ber.bind_request(message_id, dn.encode(), password.encode())

    @staticmethod
    async def read_msg(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readexactly(2)
        length = head[1]
        extra = b""
        if length & 0x80:
            extra = await reader.readexactly(length & 0x7F)
            length = int.from_bytes(extra, "big")
        return head + extra + await reader.readexactly(length)

    @staticmethod
    def result_code(pdu: bytes) -> int:
        buffer = ber.PduBuffer()
        buffer.feed(pdu)
        item = buffer.next(1 << 20)
        assert item is not None, "an incomplete PDU"
        return ber.result_code(*item)


def _load_client() -> _Client:
    return _Client()


class GatewayProcess:
    def __init__(self, folder: Path, slapd: Slapd, keyring: Path, balancers: str) -> None:
        folder.mkdir()
        self.folder = folder
        self.port, self.web, self.ldaps = free_port(), free_port(), free_port()
        shutil.copy(keyring, folder / "keyring.json")
        self.config = folder / "otpgate.toml"
        self.config.write_text(f"""
{slapd.directory_toml()}
timeout = 3.0
[vault]
keyring = "keyring.json"
[ldap_proxy]
listen = ["tcp:{self.port}:interface=127.0.0.1", "ssl:{self.ldaps}:interface=127.0.0.1"]
cert_file = "{slapd.tls.cert_file}"
key_file = "{slapd.tls.key_file}"
require_tls_for_binds = false
proxy_protocol_from = [{balancers}]
[web]
listen = ["tcp:{self.web}:interface=127.0.0.1"]
metrics_networks = ["127.0.0.1/32"]
[logging]
file = "audit.json"
json = true
flush_seconds = 0
""")
        self.log = folder / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(self.config)],
                cwd=self.folder, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"gateway did not listen: {self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def logtext(self) -> str:
        """The gateway's log file (JSON lines: its log and the audit events)."""
        path = self.folder / "audit.json"
        return path.read_text() if path.exists() else ""

    def events(self) -> list[dict]:
        # twisted's JSON log starts each record with \x1e, a line boundary for splitlines
        return [json.loads(line) for line in self.logtext().splitlines() if line.strip()]

    def audit(self) -> list[dict]:
        return [e for e in self.events() if e.get("event") == "auth"]

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web}/healthz", timeout=10) as r:
                body = r.read()
                assert body == b"ok\n"
                return r.status
        except urllib.error.HTTPError as exc:
            assert exc.read() == b"unavailable: directory not answering\n"  # nothing else
            return exc.code


class Stack:
    def __init__(self, slapd, gateways, haproxy, users):
        self.slapd, self.gateways, self.haproxy, self.users = slapd, gateways, haproxy, users


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("lb")
    slapd = Slapd(base / "slapd", schema="stock")
    slapd.start()
    gateways: list[GatewayProcess] = []
    haproxy = None
    try:
        keyring = base / "keyring.json"
        keygen(keyring, "k1")
        gateways = [GatewayProcess(base / f"gw{i}", slapd, keyring, '"127.0.0.1/32"')
                    for i in (1, 2)]
        users = [slapd.add_user(f"lb{i}", f"pw{i}") for i in range(USERS)]
        enroll = subprocess.run(
            [sys.executable, "-c", ENROLL, str(gateways[0].config), *users,
             base64.b32encode(KEY).decode()],
            capture_output=True, text=True, timeout=120)
        assert enroll.returncode == 0, enroll.stderr
        for gateway in gateways:
            gateway.start()
        haproxy = HAProxy(base / "haproxy", free_port(),
                          {"gw1": gateways[0].port, "gw2": gateways[1].port},
                          web_ports={"gw1": gateways[0].web, "gw2": gateways[1].web})
        haproxy.start()
        haproxy.wait_status({"gw1": "UP", "gw2": "UP"})
        haproxy.wait_status({"gw1": "UP", "gw2": "UP"}, backend="gateways_web")
        yield Stack(slapd, gateways, haproxy, users)
    finally:
        if haproxy is not None:
            haproxy.stop()
        for gateway in gateways:
            gateway.stop()
        slapd.stop()


def read_pdu(sock: socket.socket) -> tuple[bytes, ber.Header] | None:
    buf = ber.PduBuffer()
    while (item := buf.next(1 << 20)) is None:
        data = sock.recv(65536)
        if not data:
            return None
        buf.feed(data)
    return item


def bind(port: int, dn: str, password: str, source: str, prefix: bytes = b"") -> int | None:
    """The result code of one simple bind from ``source``; None: closed without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as s:
        s.sendall(prefix + ber.bind_request(1, dn.encode(), password.encode()))
        try:
            item = read_pdu(s)
        except ConnectionResetError:
            return None
        return None if item is None else ber.result_code(*item)


def v2_header(source: str) -> bytes:
    body = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + (40001).to_bytes(2, "big") \
        + (389).to_bytes(2, "big")
    return V2_SIGNATURE + b"\x21\x11" + len(body).to_bytes(2, "big") + body


def test_the_gateways_see_the_client(stack):
    hp = stack.haproxy.port
    dn = stack.users[0]
    before = [len(g.audit()) for g in stack.gateways]
    assert bind(hp, dn, "pw0" + hotp(KEY, 0), "127.0.0.5") == 0  # OTP login, from .5
    for source in ("127.0.0.5", "127.0.0.6", "127.0.0.6"):
        assert bind(hp, dn, "wrong-password000000", source) == 49
    new = [e for g, n in zip(stack.gateways, before, strict=True) for e in g.audit()[n:]]
    assert sorted((e["outcome"], e["client"]) for e in new) == [
        ("accept", "127.0.0.5"), ("reject", "127.0.0.5"),
        ("reject", "127.0.0.6"), ("reject", "127.0.0.6"),
    ]
    # round robin: both gateways served some of them
    assert all(len(g.audit()) > n for g, n in zip(stack.gateways, before, strict=True))


def test_the_header_only_from_the_balancer(stack):
    gw = stack.gateways[0]
    dn = stack.users[1]
    log_start = len(gw.events())
    # a peer not listed, naming loopback in a PROXY header: closed, nothing answered
    assert bind(gw.port, dn, "pw1" + hotp(KEY, 0), "127.0.0.7", v2_header("127.0.0.1")) is None
    assert bind(gw.port, dn, "pw1" + hotp(KEY, 0), "127.0.0.7",
                b"PROXY TCP4 127.0.0.1 127.0.0.1 1 389\r\n") is None
    # the balancer's own address without a header: closed too (fail closed)
    assert bind(gw.port, dn, "pw1" + hotp(KEY, 0), "127.0.0.1") is None
    # a peer not listed, plain LDAP: served as itself
    n = len(gw.audit())
    assert bind(gw.port, dn, "wrong-password000000", "127.0.0.7") == 49
    assert [e["client"] for e in gw.audit()[n:]] == ["127.0.0.7"]
    refusals = [(e["peer"], e["why"]) for e in gw.events()[log_start:] if "why" in e]
    assert refusals == [
        ("127.0.0.7", "PROXY header from a peer not listed"),
        ("127.0.0.7", "PROXY header from a peer not listed"),
        ("127.0.0.1", "bad PROXY header: no PROXY protocol signature"),
    ]
    # nothing of it reached the pipeline as 127.0.0.1
    assert not any(e["client"] == "127.0.0.1" for e in gw.audit())
    # counted in /metrics
    url = f"http://127.0.0.1:{gw.web}/metrics"
    metrics = urllib.request.urlopen(url, timeout=10).read().decode()
    family = "otpgate_ldap_proxy_connection_events_total"
    assert f'{family}{{event="proxy_header_untrusted"}} 2.0' in metrics
    assert f'{family}{{event="proxy_header_invalid"}} 1.0' in metrics


def test_ldaps_reads_the_header_before_tls(stack):
    """An ``ssl:`` listener: the balancer's header first, then the TLS handshake (HAProxy in
    TCP mode passes LDAPS through); a direct TLS client is served as itself."""
    gw = stack.gateways[1]
    context = ssl.create_default_context(cafile=str(stack.slapd.ca_file))
    request = ber.bind_request(1, stack.users[1].encode(), b"wrong-password000000")
    n = len(gw.audit())
    for source, header in (("127.0.0.1", v2_header("127.0.0.8")), ("127.0.0.7", b"")):
        with socket.create_connection(("127.0.0.1", gw.ldaps), timeout=10,
                                      source_address=(source, 0)) as raw:
            raw.sendall(header)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(request)
                item = read_pdu(tls)
                assert item is not None and ber.result_code(*item) == 49
    assert [e["client"] for e in gw.audit()[n:]] == ["127.0.0.8", "127.0.0.7"]


def test_health_checks_follow_the_directory(stack):
    """Both checks of deploy/haproxy.cfg: ``option ldap-check`` through the LDAP port (with
    the PROXY header) and ``option httpchk GET /healthz`` on the web port."""
    both_up, both_down = {"gw1": "UP", "gw2": "UP"}, {"gw1": "DOWN", "gw2": "DOWN"}
    assert [g.healthz() for g in stack.gateways] == [200, 200]
    # nothing a client could learn: the same two short bodies (checked in healthz())
    stack.slapd.stop()
    try:
        down = stack.haproxy.wait_status(both_down, timeout=20)
        stack.haproxy.wait_status(both_down, timeout=20, backend="gateways_web")
        assert [g.healthz() for g in stack.gateways] == [503, 503]
        # an LDAP client meanwhile: told "unavailable", never let in
        assert bind(stack.haproxy.port, stack.users[0], "pw0" + hotp(KEY, 1),
                    "127.0.0.5") in (None, 52)
    finally:
        stack.slapd.start()
    up = stack.haproxy.wait_status(both_up, timeout=20)
    stack.haproxy.wait_status(both_up, timeout=20, backend="gateways_web")
    time.sleep(1.1)  # past the kept answer
    assert [g.healthz() for g in stack.gateways] == [200, 200]
    print(f"\nHAProxy ldap-check: both DOWN {down:.2f}s after slapd stopped, UP {up:.2f}s "
          "after it started")


def test_deploy_haproxy_cfg_is_valid(tmp_path):
    """deploy/haproxy.cfg as shipped (its admin socket moved here) passes ``haproxy -c``."""
    text = (Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg").read_text()
    assert "send-proxy-v2" in text and "option ldap-check" in text
    assert "check port 8443 check-ssl verify required" in text  # [web] is HTTPS off loopback
    from tests.servers.tlsca import make_server_tls

    ca = make_server_tls(tmp_path / "tls").ca_file
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text.replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock"))
                   .replace("/etc/haproxy/otpgate-ca.pem", str(ca)))
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


async def _worker(client, port, users, counters, stats, deadline, seen):
    """Binds with the next HOTP code of each user in turn; on a lost connection the request
    in flight counts as failed, and the same code is sent again on a new connection."""
    retry = None
    reader = writer = None
    turn = 0
    while time.monotonic() < deadline and stats["binds"] < 20000:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=("127.0.0.5", 0))
            except OSError:
                stats["connect_failed"] += 1
                await asyncio.sleep(0.05)
                continue
        if retry is None:
            dn = users[turn % len(users)]
            turn += 1
            code = hotp(KEY, counters[dn])
            counters[dn] += 1
        else:
            dn, code = retry
        password = f"pw{dn.split(',')[0][len('uid=lb'):]}{code}"
        seen[dn].add(code)
        stats["binds"] += 1
        try:
            writer.write(client.bind_request(stats["binds"], dn, password))
            body = await asyncio.wait_for(client.read_msg(reader), 10)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            writer.close()
            reader = writer = None
            if retry is None:
                stats["in_flight_failed"] += 1
                stats["when"].append(time.monotonic())
                retry = (dn, code)
            else:
                stats["retry_failed"] += 1
                retry = None
            continue
        rc = client.result_code(body)
        outcome = "ok" if rc == 0 else f"rc{rc}"
        stats[("retry_" if retry else "") + outcome] += 1
        if rc == 0:
            stats["ok_times"].append(time.monotonic())
        retry = None
    if writer is not None:
        writer.close()


def _watch_down(haproxy, since, limit=10.0):
    """Seconds from ``since`` until HAProxy marks gw1 DOWN (polled every 20 ms)."""
    while time.monotonic() - since < limit:
        if haproxy.status().get("gw1") == "DOWN":
            return time.monotonic() - since
        time.sleep(0.02)
    return None


async def _load(client, port, users, counters, seen, kill, haproxy):
    stats: Counter = Counter()
    stats["when"], stats["ok_times"] = [], []
    deadline = time.monotonic() + LOAD_SECONDS
    groups = [users[k::CONC] for k in range(CONC)]
    tasks = [asyncio.create_task(_worker(client, port, g, counters, stats, deadline, seen))
             for g in groups]
    await asyncio.sleep(KILL_AFTER)
    killed_at = time.monotonic()
    kill()
    down = await asyncio.to_thread(_watch_down, haproxy, killed_at)
    await asyncio.gather(*tasks)
    return stats, down, killed_at


def test_kill_one_gateway_under_load(stack):
    client = _load_client()
    gw1, gw2 = stack.gateways
    users = stack.users[2:]
    counters = {dn: 1 for dn in users}  # counter 0 may be spent by the tests above
    seen: dict[str, set[str]] = {dn: set() for dn in users}
    before = {g: len(g.audit()) for g in (gw1, gw2)}
    stats, down, killed_at = asyncio.run(
        _load(client, stack.haproxy.port, users, counters, seen, gw1.kill, stack.haproxy))
    assert down is not None, "HAProxy never marked the killed gateway DOWN"
    accepts: Counter = Counter()
    for g in (gw1, gw2):
        for e in g.audit()[before[g]:]:
            assert e["client"] == "127.0.0.5"
            if e["outcome"] == "accept":
                accepts[e["user"]] += 1
    ok_before = sum(t < killed_at for t in stats["ok_times"])
    ok_after = len(stats["ok_times"]) - ok_before
    first_after = min((t for t in stats["ok_times"] if t > killed_at), default=None)
    summary = {k: v for k, v in stats.items() if k not in ("when", "ok_times")}
    double = sum(max(0, accepts[dn] - len(seen[dn])) for dn in users)
    print(f"\nfailover: {summary}, ok before kill {ok_before}, after {ok_after}; first success "
          f"{(first_after - killed_at) * 1000 if first_after else -1:.0f} ms after the kill; "
          f"HAProxy marked gw1 DOWN {down:.2f}s after the kill; "
          f"audit accepts {sum(accepts.values())} (gw1+gw2), double accepts {double}")
    assert ok_before > 0 and ok_after > 0  # the traffic moved to gw2
    # only requests in flight failed: at most one per worker, all at the kill
    assert stats["in_flight_failed"] <= CONC
    assert all(killed_at - 0.1 <= t <= killed_at + 5 for t in stats["when"])
    assert stats["retry_failed"] == 0 and stats["connect_failed"] == 0
    # every refusal is a retried in-flight code that the killed gateway had already spent
    assert not [k for k in stats if isinstance(k, str) and k.startswith("rc")]
    assert stats["retry_ok"] + stats["retry_rc49"] == stats["in_flight_failed"]
    # no double accepts: never more accepts for a user than distinct codes it sent
    assert double == 0
    assert sum(accepts.values()) <= stats["ok"] + stats["retry_ok"] + stats["in_flight_failed"]
    assert sum(accepts.values()) >= stats["ok"] + stats["retry_ok"]
