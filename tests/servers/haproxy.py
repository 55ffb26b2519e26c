"""HAProxy (Debian ``haproxy``) on loopback for the tests: TCP mode, PROXY protocol v2 to
the servers, LDAP health checks; its state read over the admin socket.

``HAProxy(folder, port, servers)`` writes ``haproxy.cfg`` (the same shape as
deploy/haproxy.cfg, with test timings: a check every 300 ms, down after 2 failures) and
starts ``haproxy -db`` in the foreground.  A missing binary or a refused configuration
raises: the tests that use it fail, never skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def config_text(port: int, servers: dict[str, int], admin_socket: Path,
                source: str = "127.0.0.1", check_ms: int = 300,
                web_ports: dict[str, int] | None = None) -> str:
    lines = "\n".join(f"    server {name} 127.0.0.1:{p}" for name, p in servers.items())
    # the same gateways checked the other way (deploy/haproxy.cfg's LDAPS backend): GET
    # /healthz on their web listeners; no frontend uses it, only its checks are read
    web = "\n".join(
        f"    server {name} 127.0.0.1:{servers[name]} check port {p}"
        for name, p in (web_ports or {}).items())
    return f"""global
    maxconn 4000
    stats socket {admin_socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s
    # a connection the chosen server refuses goes to another one (every retry)
    retries 3
    option redispatch 1

frontend ldap
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    # the gateway's own answer to an anonymous bind: success only when the directory answers
    option ldap-check
    source {source}
    default-server send-proxy-v2 check inter {check_ms}ms fall 2 rise 2
{lines}

backend gateways_web
    option httpchk GET /healthz
    http-check expect status 200
    source {source}
    default-server send-proxy-v2 inter {check_ms}ms fall 2 rise 2
{web}
"""


class HAProxy:
    def __init__(self, folder: Path, port: int, servers: dict[str, int],
                 check_ms: int = 300, web_ports: dict[str, int] | None = None,
                 source: str = "127.0.0.1") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = port
        self.servers = servers
        self.admin = folder / "admin.sock"
        self.config = folder / "haproxy.cfg"
        self.config.write_text(config_text(port, servers, self.admin, source, check_ms,
                                            web_ports))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "haproxy.log"

    def start(self) -> None:
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stdout}{check.stderr}")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text()}")
            if self.admin.exists():
                try:
                    self.command("show info")
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("haproxy did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self, backend: str = "gateways") -> dict[str, str]:
        """Server name → HAProxy's status of it (UP, DOWN, UP 1/2, ...) in ``backend``."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") in self.servers:
                out[row["svname"]] = row["status"]
        return out

    def wait_status(self, wanted: dict[str, str], timeout: float = 15,
                    backend: str = "gateways") -> float:
        """Seconds until every named server has the wanted status; raises on timeout."""
        start = time.monotonic()
        seen: dict[str, str] = {}
        while time.monotonic() - start < timeout:
            seen = self.status(backend)
            if all(seen.get(k) == v for k, v in wanted.items()):
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"HAProxy status of {backend} {seen}, wanted {wanted}")

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
