"""Log rotation under load: `twistd otpgate` with `processes = 2` on slapd, OTP binds from
four threads, the audit file moved away (what logrotate does) and SIGHUP sent to the main
process only, binds going on.  No event may be lost: the auth events in the moved file and
in the new one together are exactly the logins made.  After the reopen, every process
(the worker got the signal from the main process) writes to the new file only.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import ldap3

from otpgate.otp.oath import hotp
from otpgate.vault import keygen
from tests.integration.test_processes import ENROLL, metric
from tests.netutil import free_port

TWISTD = Path(sys.executable).with_name("twistd")
KEY = bytes.fromhex("3132333435363738393031323334353637383930")
THREADS, USERS_PER_THREAD, BINDS_PER_THREAD = 4, 2, 60
LOAD_SECONDS = 90.0
"""Bound of the load phase (it takes a few seconds)."""


def auth_events(path: Path) -> int:
    if not path.exists():
        return 0
    count = 0
    for line in path.read_text().splitlines():
        if line.strip():  # twistd's own JSON records start with RS: splitlines splits there
            count += json.loads(line).get("event") == "auth"
    return count


class Load:
    """OTP binds through the proxy, one new connection each (SO_REUSEPORT spreads them)."""

    def __init__(self, port: int, users: list[str]) -> None:
        self.port = port
        self.users = users
        self.counters = dict.fromkeys(users, 0)
        self.made = 0
        self.accepted = 0
        self.lock = threading.Lock()

    def bind(self, index: int, dn: str) -> None:
        code = hotp(KEY, self.counters[dn])
        self.counters[dn] += 1
        server = ldap3.Server(f"ldap://127.0.0.1:{self.port}", connect_timeout=10)
        conn = ldap3.Connection(server, user=dn, password=f"pw{index}{code}",
                                receive_timeout=20, raise_exceptions=False)
        try:
            ok = conn.bind()
        finally:
            conn.unbind()
        with self.lock:
            self.made += 1
            self.accepted += bool(ok)

    def thread(self, first: int, deadline: float) -> None:
        mine = list(range(first, first + USERS_PER_THREAD))
        for n in range(BINDS_PER_THREAD):
            if time.monotonic() > deadline:
                return
            i = mine[n % len(mine)]
            self.bind(i, self.users[i])


def test_rotation_under_load_loses_no_event(slapd, tmp_path):
    port, web = free_port(), free_port()
    keygen(tmp_path / "keyring.json", "k1")
    config = tmp_path / "otpgate.toml"
    config.write_text(f"""
{slapd.directory_toml()}
[vault]
keyring = "keyring.json"
[ldap_proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
processes = 2
[web]
listen = ["tcp:{web}:interface=127.0.0.1"]
metrics_networks = ["127.0.0.1/32"]
[logging]
file = "audit.json"
json = true
flush_seconds = 1.0
""")
    audit, moved = tmp_path / "audit.json", tmp_path / "audit.json.1"
    users = [slapd.add_user(f"rot{os.getpid()}x{i}", f"pw{i}")
             for i in range(THREADS * USERS_PER_THREAD)]
    enroll = subprocess.run([sys.executable, "-c", ENROLL, str(config), *users,
                             base64.b32encode(KEY).decode()],
                            capture_output=True, text=True, timeout=60)
    assert enroll.returncode == 0, enroll.stderr
    proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(config)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = Load(port, users)

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=10).read().decode()

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _ready(config, port):
            time.sleep(0.2)
        assert _ready(config, port), "gateway or worker did not start"
        time.sleep(1)
        # 1. load from four threads; the file is moved and SIGHUP sent a third of the way in
        stop_at = time.monotonic() + LOAD_SECONDS
        threads = [threading.Thread(target=load.thread, args=(t * USERS_PER_THREAD, stop_at))
                   for t in range(THREADS)]
        for t in threads:
            t.start()
        total = THREADS * BINDS_PER_THREAD
        while load.made < total // 3 and time.monotonic() < stop_at:
            time.sleep(0.01)
        audit.rename(moved)  # logrotate's move ...
        proc.send_signal(signal.SIGHUP)  # ... and its postrotate (the main process only)
        for t in threads:
            t.join(timeout=LOAD_SECONDS + 30)
        assert load.made == total and load.accepted == total, (load.made, load.accepted)
        # 2. every process has reopened: binds now (through both processes) go to the new file
        time.sleep(2.5)  # flushes (1 s) and the forwarded signal are done
        in_moved = auth_events(moved)
        worker_before = metric(scrape(), 'otpgate_process_authentications_total{process="1"}')
        for n in range(24):
            i = n % len(users)
            load.bind(i, users[i])
        assert load.accepted == total + 24
        time.sleep(2.5)
        worker_after = metric(scrape(), 'otpgate_process_authentications_total{process="1"}')
        assert worker_after > worker_before, "no bind reached the worker: no proof it reopened"
        assert auth_events(moved) == in_moved, "a process still writes to the moved file"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    old, new = auth_events(moved), auth_events(audit)
    assert old > 0 and new > 0, (old, new)
    assert old + new == load.made, (old, new, load.made)  # not one event lost, none twice


def _ready(config: Path, port: int) -> bool:
    workers = subprocess.run(["pgrep", "-f", f"otpgate.worker {config}"],
                             capture_output=True, text=True).stdout.split()
    with socket.socket() as s:
        return bool(workers) and s.connect_ex(("127.0.0.1", port)) == 0
