"""`[ldap_proxy] processes = 2`: a worker process shares the listening port (SO_REUSEPORT)."""

from __future__ import annotations

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
[directory]
profile = "openldap"
urls = ["{slapd.url}"]
start_tls = true
ca_file = "{slapd.ca_file}"
base_dn = "{slapd.suffix}"
bind_dn = "{slapd.service_dn}"
bind_password = "{slapd.service_password}"
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
