"""A NAS that fails over between two gateways (`twistd otpgate`, one slapd).

The NAS-like client is one UDP socket: it sends an Access-Request (password + HOTP code) to
gateway A, "loses" A's answer, waits ``gap`` seconds (its retransmission timeout) and sends
the identical packet (same Identifier, same Request Authenticator, RFC 2865 §2.5) to
gateway B.  Both answers are read, to check the promise as well: never two Accepts for one
code unless it is the same request and the option is on.

* without ``[radius] failover_replay_seconds``: B refuses ("OTP already used") in every
  round where A's write landed first; measured per gap and printed (``-s``), see
  docs/RADIUS.md "Several gateways";
* with it: B answers Accept (same reply as A, signed), counted in B's /metrics; a different
  request carrying the same code through B is refused; the same packet reaching B after
  the window is refused.

Rounds per gap: ``OTPGATE_FAILOVER_ROUNDS`` (default 8), bounded.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyrad import packet as pp
from pyrad.dictionary import Dictionary

from otpgate.otp.oath import hotp
from otpgate.vault import keygen
from tests.integration.test_processes import ENROLL
from tests.netutil import free_port

TWISTD = Path(sys.executable).with_name("twistd")
SECRET = b"failover-test-secret-0123"
PASSWORD = "pw-failover"
ROUNDS = min(int(os.environ.get("OTPGATE_FAILOVER_ROUNDS", "8")), 500)
GAPS = (0.0, 0.002, 0.01, 0.05, 0.3)
"""Seconds between the copy sent to A and the copy sent to B (the NAS's timeout)."""
ACCEPT, REJECT = pp.AccessAccept, pp.AccessReject


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gateway:
    name: str
    proc: subprocess.Popen[str]
    radius: int
    web: int
    folder: Path

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.web}/metrics"
        return urllib.request.urlopen(url, timeout=10).read().decode()

    def audit(self) -> list[dict[str, Any]]:
        lines = (self.folder / "audit.json").read_text().splitlines()
        return [e for e in map(json.loads, filter(None, lines)) if e.get("event") == "auth"]


def start_gateway(slapd: Any, tmp: Path, name: str, keyring: Path, window: float) -> Gateway:
    folder = tmp / name
    folder.mkdir()
    radius, web = free_udp_port(), free_port()
    config = folder / "otpgate.toml"
    config.write_text(f"""
{slapd.directory_toml()}
[vault]
keyring = "{keyring}"
[radius]
listen = ["127.0.0.1:{radius}"]
failover_replay_seconds = {window}
[[radius.clients]]
address = "127.0.0.1/32"
secret = "{SECRET.decode()}"
mode = "append"
[web]
listen = ["tcp:{web}:interface=127.0.0.1"]
metrics_networks = ["127.0.0.1/32"]
[logging]
file = "audit.json"
json = true
flush_seconds = 0
""")
    proc = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(config)],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    return Gateway(name, proc, radius, web, folder)


def stop(gateways: list[Gateway]) -> None:
    for gw in gateways:
        if gw.proc.poll() is None:
            gw.proc.send_signal(signal.SIGTERM)
    for gw in gateways:
        try:
            gw.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            gw.proc.wait(timeout=10)


class Nas:
    """One UDP socket, like a NAS: sends to either gateway, reads answers by their port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.ident = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, user: str, password: str) -> tuple[Any, bytes]:
        self.ident = (self.ident + 1) % 256
        pkt = pp.AuthPacket(id=self.ident, secret=SECRET, dict=Dictionary())
        pkt.authenticator = os.urandom(16)
        pkt[1] = [user.encode()]
        pkt[2] = [pkt.PwCrypt(password)]
        pkt.add_message_authenticator()
        return pkt, pkt.RequestPacket()

    def send(self, raw: bytes, port: int) -> None:
        self.sock.sendto(raw, ("127.0.0.1", port))

    def answers(self, pkt: Any, ports: set[int], timeout: float = 5.0) -> dict[int, int]:
        """The reply code from each port in ``ports`` (verified signature), until all have
        answered or ``timeout`` passed."""
        got: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while set(got) != ports and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, (_host, port) = self.sock.recvfrom(4096)
            except TimeoutError:
                break
            reply = pp.AuthPacket(packet=data, secret=SECRET, dict=Dictionary())
            if port in ports and reply.id == pkt.id and pkt.VerifyReply(reply, data,
                                                                          enforce_ma=True):
                got[port] = reply.code
        return got

    def drain(self) -> None:
        self.sock.settimeout(0.05)
        try:
            while True:
                self.sock.recvfrom(4096)
        except TimeoutError:
            pass

    def failover(self, a: Gateway, b: Gateway, user: str, password: str,
                 gap: float) -> tuple[int | None, int | None, bytes]:
        """One login sent to A, then (after ``gap``) the identical packet to B."""
        pkt, raw = self.request(user, password)
        self.send(raw, a.radius)
        if gap:
            time.sleep(gap)
        self.send(raw, b.radius)
        got = self.answers(pkt, {a.radius, b.radius})
        return got.get(a.radius), got.get(b.radius), raw


def ready(nas: Nas, gateways: list[Gateway]) -> None:
    deadline = time.monotonic() + 40
    waiting = list(gateways)
    while waiting and time.monotonic() < deadline:
        for gw in list(waiting):
            assert gw.proc.poll() is None, f"gateway {gw.name} exited"
            status = pp.AuthPacket(code=pp.StatusServer, id=200, secret=SECRET,
                                   dict=Dictionary())
            status.authenticator = os.urandom(16)
            status.add_message_authenticator()
            nas.send(status.RequestPacket(), gw.radius)
            if nas.answers(status, {gw.radius}, timeout=0.5):
                waiting.remove(gw)
    assert not waiting, "gateways did not answer Status-Server"
    nas.drain()


def setup(slapd: Any, tmp: Path, window: float) -> tuple[list[Gateway], str, bytes]:
    keyring = tmp / "keyring.json"
    keygen(keyring, "k1")
    gateways = [start_gateway(slapd, tmp, name, keyring, window) for name in ("a", "b")]
    uid = f"fo{os.getpid()}w{int(window)}"
    dn = slapd.add_user(uid, PASSWORD)
    key = os.urandom(20)
    enroll = subprocess.run(
        [sys.executable, "-c", ENROLL, str(gateways[0].folder / "otpgate.toml"), dn,
         base64.b32encode(key).decode()], capture_output=True, text=True, timeout=60)
    assert enroll.returncode == 0, enroll.stderr
    return gateways, uid, key


def name(code: int | None) -> str:
    return {ACCEPT: "accept", REJECT: "reject", None: "none"}.get(code, str(code))


def test_failover_retransmission_is_refused_without_the_option(slapd, tmp_path):
    gateways, uid, key = setup(slapd, tmp_path, 0)
    a, b = gateways
    nas = Nas()
    counter = 0
    table: dict[float, Counter[str]] = {}
    try:
        ready(nas, gateways)
        for gap in GAPS:
            seen: Counter[str] = Counter()
            for _ in range(ROUNDS):
                at_a, at_b, _raw = nas.failover(a, b, uid, PASSWORD + hotp(key, counter), gap)
                counter += 1
                seen[f"A {name(at_a)}, B {name(at_b)}"] += 1
                # the promise: one code, one Accept, whoever wins the race
                assert (at_a, at_b) in ((ACCEPT, REJECT), (REJECT, ACCEPT)), (gap, at_a, at_b)
            table[gap] = seen
        print("\nfailover without the option (rounds per gap: %d)" % ROUNDS)
        for gap, seen in table.items():
            print(f"  gap {gap * 1000:6.1f} ms: {dict(seen)}")
        # a NAS's timeout is far longer than A's login: B refuses every time
        assert table[GAPS[-1]] == Counter({"A accept, B reject": ROUNDS})
        reasons = [e["reason"] for e in b.audit() if e["outcome"] == "reject"]
        assert reasons and all(r == "OTP already used" for r in reasons), set(reasons)
        assert "otpgate_radius_packets_total{result=\"failover_retransmissions\"} 0.0" in b.metrics()
    finally:
        nas.close()
        stop(gateways)


def test_failover_retransmission_with_the_option(slapd, tmp_path):
    window = 2.0
    gateways, uid, key = setup(slapd, tmp_path, window)
    a, b = gateways
    nas = Nas()
    counter = 0
    try:
        ready(nas, gateways)
        retransmitted = 0
        for gap in GAPS:
            for _ in range(ROUNDS):
                code = hotp(key, counter)
                counter += 1
                at_a, at_b, raw = nas.failover(a, b, uid, PASSWORD + code, gap)
                # the same request, answered by both: the NAS gets its Accept from B
                assert (at_a, at_b) == (ACCEPT, ACCEPT), (gap, at_a, at_b)
                retransmitted += 1
                # the attack: another request with the same code, through B, then A
                pkt, other = nas.request(uid, PASSWORD + code)
                for gw in (b, a):
                    nas.send(other, gw.radius)
                    assert nas.answers(pkt, {gw.radius}) == {gw.radius: REJECT}
        # the identical packet once more, to a gateway that has not seen it yet, after the
        # window: refused (B's duplicate cache would answer B; so A and B swap roles)
        code = hotp(key, counter)
        pkt, raw = nas.request(uid, PASSWORD + code)
        nas.send(raw, b.radius)
        assert nas.answers(pkt, {b.radius}) == {b.radius: ACCEPT}
        time.sleep(window + 0.7)
        nas.send(raw, a.radius)
        assert nas.answers(pkt, {a.radius}) == {a.radius: REJECT}
        # every answered retransmission is counted by the gateway that answered it
        total = 0.0
        for gw in gateways:
            for line in gw.metrics().splitlines():
                if line.startswith('otpgate_radius_packets_total{result="failover_retransmissions"}'):
                    total += float(line.split()[-1])
        assert total == retransmitted
        events = a.audit() + b.audit()
        again = [e for e in events if "retransmission" in str(e.get("reason"))]
        assert len(again) == retransmitted and all(e["outcome"] == "accept" for e in again)
        assert all(PASSWORD not in json.dumps(e) for e in events)
    finally:
        nas.close()
        stop(gateways)
