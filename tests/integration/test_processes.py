"""`[ldap_proxy] processes = 2`: a worker process shares the listening port (SO_REUSEPORT)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from otpgate.otp.oath import hotp
from otpgate.vault import keygen
from tests.netutil import free_port

TWISTD = Path(sys.executable).with_name("twistd")
OTPGATE = Path(sys.executable).with_name("otpgate")


def test_two_processes_share_the_port(slapd, tmp_path):
    port = free_port()
    keygen(tmp_path / "keyring.json", "k1")
    config = tmp_path / "otpgate.toml"
    config.write_text(f"""
{slapd.directory_toml()}
[vault]
keyring = "keyring.json"
[ldap_proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
processes = 2
[logging]
file = "audit.json"
json = true
flush_seconds = 0
""")
    users = [slapd.add_user(f"proc{os.getpid()}x{i}", f"pw{i}") for i in range(2)]
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    key = bytes.fromhex("3132333435363738393031323334353637383930")
    proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(config)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        workers: list[str] = []
        while time.monotonic() < deadline and not workers:
            workers = subprocess.run(["pgrep", "-f", f"otpgate.worker {config}"],
                                     capture_output=True, text=True).stdout.split()
            time.sleep(0.2)
        assert workers, "no worker process started"
        # give each user an HOTP token with a known key (the gateway's own store, in a subprocess)
        enroll = subprocess.run(
            [sys.executable, "-c", ENROLL, str(config), *users, secret],
            capture_output=True, text=True, timeout=60)
        assert enroll.returncode == 0, enroll.stderr
        time.sleep(1)
        ok = 0
        for counter in range(10):
            for i, dn in enumerate(users):
                run = subprocess.run(
                    ["ldapwhoami", "-x", "-H", f"ldap://127.0.0.1:{port}", "-D", dn,
                     "-w", f"pw{i}{hotp(key, counter)}"],
                    capture_output=True, text=True, timeout=20,
                    env={**os.environ, "LDAPCONF": "/dev/null"})
                ok += run.returncode == 0
        assert ok == 20
        events = [json.loads(line) for line in (tmp_path / "audit.json").read_text().splitlines()
                  if line.strip()]
        audit = [e for e in events if e.get("event") == "auth"]
        assert len(audit) >= 20 and all(e["outcome"] == "accept" for e in audit[-20:])
        text = (tmp_path / "audit.json").read_text()
        for i in range(2):
            assert f"pw{i}" not in text  # no password, no code in any event
        assert not any(hotp(key, c) in text for c in range(10))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        leftover = subprocess.run(["pgrep", "-f", f"otpgate.worker {config}"],
                                  capture_output=True, text=True).stdout.split()
        if not leftover:
            break
        time.sleep(0.2)
    assert not leftover, "worker outlived the main process"


ENROLL = """
import sys, base64
from pathlib import Path
from twisted.internet import task, defer
from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.config import load_config
from otpgate.service import Gateway
from otpgate.tokens import TokenType
from otpgate.vault import Keyring

async def main(reactor):
    config = load_config(Path(sys.argv[1]))
    key = base64.b32decode(sys.argv[-1])
    gw = Gateway(config, Keyring.load(config.keyring), reactor)
    for dn in sys.argv[2:-1]:
        user = await gw.store.resolve(dn)
        token, secret = new_oath_token(config.otp, TokenType.HOTP, key=key)
        await gw.store.update(user, lambda s: enroll_change(s, token, secret, 5))
    gw.close()

task.react(lambda r: defer.ensureDeferred(main(r)))
"""


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_add_up_every_process(slapd, tmp_path):
    """`/metrics` (main process) counts the logins of the extra proxy process too: binds
    through both processes (SO_REUSEPORT spreads the connections), the sum and the share of
    each; a worker killed and restarted keeps its counts in the sums."""
    import urllib.request

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
""")
    users = [slapd.add_user(f"met{os.getpid()}x{i}", f"pw{i}") for i in range(4)]
    key = bytes.fromhex("3132333435363738393031323334353637383930")
    secret = base64.b32encode(key).decode()
    enroll = subprocess.run([sys.executable, "-c", ENROLL, str(config), *users, secret],
                            capture_output=True, text=True, timeout=60)
    assert enroll.returncode == 0, enroll.stderr
    proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(config)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    accept = 'otpgate_authentications_total{front_end="ldap",outcome="accept"}'
    counters = {dn: 0 for dn in users}

    def scrape() -> str:
        url = f"http://127.0.0.1:{web}/metrics"
        return urllib.request.urlopen(url, timeout=10).read().decode()

    def binds(rounds: int) -> int:
        ok = 0
        for _ in range(rounds):
            for i, dn in enumerate(users):
                run = subprocess.run(
                    ["ldapwhoami", "-x", "-H", f"ldap://127.0.0.1:{port}", "-D", dn,
                     "-w", f"pw{i}{hotp(key, counters[dn])}"],
                    capture_output=True, text=True, timeout=20,
                    env={**os.environ, "LDAPCONF": "/dev/null"})
                counters[dn] += 1
                ok += run.returncode == 0
        return ok

    def settled(expected: float) -> str:
        deadline = time.monotonic() + 15  # workers write their counters every second
        text = scrape()
        while metric(text, accept) != expected and time.monotonic() < deadline:
            time.sleep(0.3)
            text = scrape()
        return text

    def worker_pids() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"otpgate.worker {config}"],
                              capture_output=True, text=True).stdout.split()

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (worker_pids() and _listening(port)):
            time.sleep(0.2)
        assert worker_pids(), "no worker process started"
        time.sleep(1)
        assert binds(10) == 40
        text = settled(40)
        main = metric(text, 'otpgate_process_authentications_total{process="main"}')
        worker = metric(text, 'otpgate_process_authentications_total{process="1"}')
        assert metric(text, accept) == 40, text
        assert main > 0 and worker > 0 and main + worker == 40, (main, worker)
        assert metric(text, "otpgate_processes_reporting") == 2
        assert metric(text, 'otpgate_directory_seconds_count{operation="modify"}') >= 40
        # the worker dies and is started again: what it counted stays in the sums
        (old,) = worker_pids()
        os.kill(int(old), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and worker_pids() in ([], [old]):
            time.sleep(0.2)
        assert worker_pids() not in ([], [old]), "the worker was not restarted"
        time.sleep(1)
        assert binds(3) == 12
        text = settled(52)
        assert metric(text, accept) == 52, text
        again = metric(text, 'otpgate_process_authentications_total{process="1"}')
        assert again >= worker
        (pid,) = worker_pids()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        folder = Path(args[args.index(str(config).encode()) + 1].decode())
        assert (folder / "worker-1.json").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not folder.exists()  # the main process removed the counters' folder


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
