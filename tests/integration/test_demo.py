"""The README's first command: `twistd otpgate --demo` works with real ldap-utils clients."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from otpgate.cli import decode_base32
from otpgate.otp.oath import totp
from tests.netutil import free_port

TWISTD = Path(sys.executable).with_name("twistd")


def whoami(port, dn, password):
    return subprocess.run(
        ["ldapwhoami", "-x", "-H", f"ldap://127.0.0.1:{port}", "-D", dn, "-w", password],
        capture_output=True, text=True, timeout=20,
    )


def test_demo_gateway_end_to_end(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "otpgate", "--demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    try:
        output = ""
        deadline = time.monotonic() + 60
        while "exempt service account" not in output:
            line = proc.stdout.readline()
            assert line, f"demo exited early:\n{output}"
            output += line
            assert time.monotonic() < deadline, output
        secret = re.search(r"secret=([A-Z2-7]+)", output).group(1)
        key = decode_base32(secret)
        alice = "uid=alice,ou=people,dc=demo,dc=otpgate"
        code = totp(key, time.time())
        good = whoami(port, alice, "alice-password" + code)
        assert good.returncode == 0, good.stderr
        assert good.stdout.strip() == f"dn:{alice}"
        replay = whoami(port, alice, "alice-password" + code)
        assert replay.returncode == 49, replay
        assert whoami(port, alice, "wrong-password" + totp(key, time.time() + 30)).returncode == 49
        assert whoami(port, alice, "alice-password").returncode == 49  # OTP required
        exempt = whoami(port, "uid=app,ou=services,dc=demo,dc=otpgate", "app-password")
        assert exempt.returncode == 0, exempt.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
