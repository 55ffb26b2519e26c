"""A throwaway FreeRADIUS 3.2 on loopback: PAP, CHAP and MS-CHAP(v2) from a users file.

Used by bench/radius.py (the protocol ceiling: PAP from a users file, no OTP, no write) and by
tests/integration/test_radius_mschap_xcheck.py (FreeRADIUS's own rlm_mschap as the reference
for MS-CHAP2-Success and the MPPE keys).  Nothing outside ``workdir`` is read or written apart
from the system dictionaries and modules.

    with FreeRadius(tmp / "fr", users={"alice": "secret"}, secret="x" * 16) as fr:
        fr.port  # UDP auth port on 127.0.0.1
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

FREERADIUS = "/usr/sbin/freeradius"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"unsupported character in {value!r}")
    return f'"{value}"'


class FreeRadius:
    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        secret: str,
        *,
        port: int | None = None,
        threads: int = 8,
        debug: bool = False,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.users = dict(users)
        self.secret = secret
        self.port = port or free_udp_port()
        self.threads = threads
        self.debug = debug
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        (d / "dictionary").write_text("")
        lines = [f"{_quote(u)} Cleartext-Password := {_quote(p)}" for u, p in self.users.items()]
        (d / "users").write_text("\n".join(lines) + "\n")
        (d / "radiusd.conf").write_text(f"""
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = freeradius
confdir = {d}
modconfdir = {d}
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
pidfile = {d}/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
log {{
    destination = files
    file = {d}/radius.log
    auth = no
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = yes
}}
proxy_requests = no
thread pool {{
    start_servers = {self.threads}
    max_servers = {self.threads}
    min_spare_servers = 1
    max_spare_servers = {self.threads}
    max_requests_per_server = 0
}}
client loopback {{
    ipaddr = 127.0.0.1
    secret = {_quote(self.secret)}
    require_message_authenticator = no
}}
modules {{
    pap {{
        normalise = yes
    }}
    chap {{
    }}
    mschap {{
        use_mppe = yes
        require_encryption = no
        require_strong = no
        with_ntdomain_hack = yes
    }}
    files {{
        filename = {d}/users
    }}
}}
server default {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {self.port}
    }}
    authorize {{
        files
        chap
        mschap
        pap
    }}
    authenticate {{
        Auth-Type PAP {{
            pap
        }}
        Auth-Type CHAP {{
            chap
        }}
        Auth-Type MS-CHAP {{
            mschap
        }}
    }}
}}
""")

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        args = [FREERADIUS, "-f", "-d", str(self.workdir), "-n", "radiusd"]
        if self.debug:
            args.append("-X")
        log = (self.workdir / "stdout.log").open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                logs = [self.workdir / "stdout.log", self.workdir / "radius.log"]
                text = "".join(p.read_text()[-2000:] for p in logs if p.exists())
                raise RuntimeError(f"freeradius exited with {self.proc.returncode}: {text}")
            if self._ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"freeradius did not answer Status-Server on 127.0.0.1:{self.port}")

    def _ready(self) -> bool:
        """Answers a Status-Server (radclient, so no dictionary of our own is needed)."""
        out = subprocess.run(
            [
                "radclient",
                "-q",
                "-t",
                "0.3",
                "-r",
                "1",
                f"127.0.0.1:{self.port}",
                "status",
                self.secret,
            ],
            input=b"Message-Authenticator = 0x00\n",
            capture_output=True,
            timeout=10,
            check=False,
        )
        return out.returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> FreeRadius:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":  # manual check: python bench/radius_freeradius.py DIR
    import sys

    with FreeRadius(Path(sys.argv[1]), {"alice": "123456"}, "testing123-secret", debug=True) as fr:
        print("freeradius on", fr.port, "pid", fr.proc.pid if fr.proc else None, flush=True)
        signal.pause() if os.isatty(0) else time.sleep(float(sys.argv[2]) if sys.argv[2:] else 5)
