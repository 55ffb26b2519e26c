"""Attacker-sized names against ``twistd otpgate`` on slapd: one anonymous client sends bind
names of 200 KB (``cn=`` + 100,000 x ``\\,``, under the 256-KiB pre-bind PDU cap) in a loop.

Before, every such name went through ldap3's DN parser, quadratic on escaped commas: 3 s of
the gateway's CPU per bind, during which every other client waited (a bind that takes 5 ms
took 2.85 s), and the audit trail wrote 600 KB per bind (the name twice, escaped).  Now names
over ``[policy] max_name_length`` are refused before anything parses them, the DN parser is
linear, and every audit field is bounded.  Measured here as ratios, never as wall times:
another client's bind latency under the attack against its latency alone, and audit bytes
per attacking bind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from otpgate import ber
from otpgate.vault import keygen
from tests.netutil import free_port

TWISTD = Path(sys.executable).with_name("twistd")
EVIL_NAME = ("cn=" + "\\," * 100_000 + ",ou=people,dc=example,dc=org").encode()


def _bind(sock: socket.socket, mid: int, name: bytes, password: bytes) -> int:
    sock.sendall(ber.bind_request(mid, name, password))
    buf = ber.PduBuffer()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf.feed(chunk)
        item = buf.next(1 << 20)
        if item is not None:
            pdu, header = item
            return ber.result_code(pdu, header)


def _latencies(port: int, dn: bytes, password: bytes, count: int, seconds: float = 60.0
               ) -> list[float]:
    """Up to ``count`` binds of the service account for up to ``seconds``, one connection,
    each timed."""
    times = []
    end = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for mid in range(1, count + 1):
            start = time.perf_counter()
            assert _bind(sock, mid, dn, password) == 0
            times.append(time.perf_counter() - start)
            if time.monotonic() > end:
                break
    return times


def test_huge_bind_names_neither_stall_the_gateway_nor_flood_the_audit(slapd, tmp_path):
    port = free_port()
    keygen(tmp_path / "keyring.json", "k1")
    audit = tmp_path / "audit.json"
    config = tmp_path / "otpgate.toml"
    config.write_text(f"""
{slapd.directory_toml()}
[vault]
keyring = "keyring.json"
[policy]
exempt_dns = ["{slapd.service_dn}"]
exempt_subtrees = ["ou=services,{slapd.suffix}"]
[ldap_proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
[logging]
file = "{audit.name}"
json = true
flush_seconds = 0
""")
    proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(config)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    dn, password = slapd.service_dn.encode(), slapd.service_password.encode()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _latencies(port, dn, password, 1)
                break
            except OSError:
                assert time.monotonic() < deadline, "twistd otpgate did not start"
                time.sleep(0.2)
        alone = statistics.median(_latencies(port, dn, password, 200))

        stop = threading.Event()
        sent: list[int] = []

        def attack() -> None:  # bounded: at most 2,000 binds, until the victim is done
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                for mid in range(1, 2001):
                    if stop.is_set():
                        break
                    code = _bind(sock, mid, EVIL_NAME, b"x")
                    assert code == 49, code
                    sent.append(mid)

        size_before = audit.stat().st_size
        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        time.sleep(0.2)
        # binds for 4 s while the attack goes on: the worst one shows a stalled reactor
        victim = _latencies(port, dn, password, 20_000, seconds=4.0)
        worst = max(victim)
        stop.set()
        attacker.join(timeout=30)
        assert not attacker.is_alive()
        # one attacking bind stalled the reactor for 3 s before: every other client waited
        assert worst < 100 * alone + 0.05, (alone, worst, len(sent))
        assert len(sent) >= 20, f"only {len(sent)} attacking binds were answered in 4 s"

        time.sleep(0.2)
        events = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
        refused = [e for e in events if "max_name_length" in (e.get("reason") or "")]
        assert len(refused) >= len(sent)
        assert all(len(e["user"]) < 400 for e in refused)
        grown = audit.stat().st_size - size_before
        per_event = grown / (len(sent) + len(victim))
        assert per_event < 2_000, per_event  # 600 KB per attacking bind before
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -signal.SIGTERM) and proc.stdout is not None:
            sys.stderr.write(proc.stdout.read())
    assert os.path.exists(audit)
