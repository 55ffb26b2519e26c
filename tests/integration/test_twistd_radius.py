"""`twistd otpgate --config` serves RADIUS next to the LDAP proxy (radclient from FreeRADIUS)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from otpgate.otp.oath import hotp
from otpgate.vault import keygen
from tests.integration.test_processes import ENROLL
from tests.netutil import free_port

TWISTD = Path(sys.executable).with_name("twistd")
SECRET = "radius-test-secret-0123"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def radclient(port: int, attributes: str, secret: str = SECRET) -> str:
    run = subprocess.run(["radclient", "-x", "-r", "1", "-t", "3", f"127.0.0.1:{port}", "auth", secret],
                         input=attributes, capture_output=True, text=True, timeout=30)
    return run.stdout + run.stderr


def test_twistd_serves_radius_append_mode_and_counts_it_in_metrics(slapd, tmp_path):
    ldap_port, radius_port, web_port = free_port(), free_udp_port(), free_port()
    keygen(tmp_path / "keyring.json", "k1")
    config = tmp_path / "otpgate.toml"
    config.write_text(f"""
{slapd.directory_toml()}
[vault]
keyring = "keyring.json"
[ldap_proxy]
listen = ["tcp:{ldap_port}:interface=127.0.0.1"]
[radius]
listen = ["127.0.0.1:{radius_port}"]
[[radius.clients]]
address = "127.0.0.1/32"
secret = "{SECRET}"
mode = "append"
[[radius.clients.reply]]
attributes = {{ "Tunnel-Type:1" = "VLAN", "Tunnel-Medium-Type:1" = "IEEE-802", "Tunnel-Private-Group-Id:1" = "7" }}
[web]
listen = ["tcp:{web_port}:interface=127.0.0.1"]
metrics_networks = ["127.0.0.1/32"]
""")
    uid = f"rad{os.getpid()}"
    dn = slapd.add_user(uid, "pw-radius")
    key = os.urandom(20)
    enroll = subprocess.run([sys.executable, "-c", ENROLL, str(config), dn,
                             base64.b32encode(key).decode()], capture_output=True, text=True,
                            timeout=60)
    assert enroll.returncode == 0, enroll.stderr
    proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(config)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        request = (f'User-Name = "{uid}", User-Password = "pw-radius{hotp(key, 0)}", '
                   "Message-Authenticator = 0x00\n")
        deadline = time.monotonic() + 30
        out = ""
        while time.monotonic() < deadline and "Access-Accept" not in out:
            out = radclient(radius_port, request)
            if "Access-Reject" in out:
                break
            time.sleep(0.3)
        assert "Access-Accept" in out, out
        # the reply rule, encoded with the dictionaries installed with otpgate
        assert 'Tunnel-Private-Group-Id:1 = "7"' in out and "Tunnel-Type:1 = VLAN" in out, out
        assert "Access-Reject" in radclient(radius_port, request)  # the code is spent
        radclient(radius_port, request, secret="not-the-secret")  # dropped: no reply
        url = f"http://127.0.0.1:{web_port}/metrics"
        metrics = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'otpgate_authentications_total{front_end="radius",outcome="accept"} 1.0' in metrics
        assert 'otpgate_authentications_total{front_end="radius",outcome="reject"} 1.0' in metrics
        assert 'otpgate_radius_dropped_total{reason="bad_authenticator"} 1.0' in metrics
        assert 'otpgate_radius_packets_total{result="accepted"} 1.0' in metrics
        assert 'otpgate_directory_seconds_count{operation="modify"}' in metrics
        assert 'otpgate_directory_seconds_count{operation="bind"}' in metrics
        assert "otpgate_cas_retries_total 0.0" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
