"""A throwaway Samba AD domain controller on loopback for the test suite.

Usage::

    dc = SambaDC(tmp_path / "samba")
    dc.start()                       # provisions OTPGATE.TEST on first start (a few seconds)
    dc.ldaps_url                     # ldaps://127.0.0.1:636, certificate from dc.ca_file
    dn = dc.create_user("alice", "Passw0rd!alice")
    dc.stop()

Only the ``ldap`` service runs (LDAP 389/636 and global catalog 3268/3269: fixed ports in
Samba, bound on 127.0.0.1 only). Samba's default ``ldap server require strong auth = yes``
is kept, so simple binds need LDAPS or StartTLS, as on a hardened Windows DC.
Nothing is cached outside ``workdir``: each instance provisions a new domain.
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

import ldap3
from ldap3.core.exceptions import LDAPException

from .tlsca import TLSPaths, make_server_tls

__all__ = ["SAMBA", "SAMBA_PORTS", "SAMBA_TOOL", "SambaDC"]

SAMBA = "/usr/sbin/samba"
SAMBA_TOOL = "/usr/bin/samba-tool"
SAMBA_PORTS = (389, 636, 3268, 3269)
"""Ports the Samba ``ldap`` service always binds: LDAP, LDAPS, GC, GC over TLS."""

AttrValues = str | bytes | Iterable[str | bytes]


class SambaDC:
    """A provisioned Samba AD DC (realm ``OTPGATE.TEST``, NetBIOS domain ``OTPGATE``).

    ``workdir`` receives everything: ``dc/`` (the provision: ``etc/smb.conf``, ``private/``,
    ``state/``...), ``tls/``, ``provision.log`` and ``samba.log``.
    """

    realm = "OTPGATE.TEST"
    dns_domain = "otpgate.test"
    domain = "OTPGATE"
    """NetBIOS domain name (``OTPGATE\\user``)."""
    host_name = "dc1"
    base_dn = "DC=otpgate,DC=test"
    users_dn = "CN=Users,DC=otpgate,DC=test"
    admin_dn = "CN=Administrator,CN=Users,DC=otpgate,DC=test"
    admin_upn = "Administrator@otpgate.test"

    def __init__(
        self,
        workdir: Path | str,
        *,
        host: str = "127.0.0.1",
        admin_password: str | None = None,
        process_model: Literal["single", "prefork", "standard"] = "single",
        start_timeout: float = 60.0,
        verbose: bool = True,
        services: str = "ldap",
        host_name: str = "dc1",
        ca: TLSPaths | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``services``: Samba's ``server services`` (a second DC's join and replication
        need ``rpc``, ``drepl``, ``kdc`` too); ``ca``: issue the DC's certificate from that
        CA (one client CA file for several DCs); ``env``: more environment for samba and
        samba-tool (``KRB5_CONFIG``, ``LD_PRELOAD`` of nss_wrapper: see samba_pair.py)."""
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"SambaDC only listens on loopback addresses, not {host!r}")
        self.workdir = Path(workdir).resolve()
        self.host = host
        # Complexity rules of the default domain policy: upper, lower, digit, symbol.
        self.admin_password = admin_password or "Adm1n-" + secrets.token_hex(8)
        self.process_model = process_model
        self.start_timeout = start_timeout
        self.verbose = verbose
        self.services = services
        self.host_name = host_name
        self.ca = ca
        self.env = dict(env or {})
        self.target_dir = self.workdir / "dc"
        self.smb_conf = self.target_dir / "etc" / "smb.conf"
        self.provision_log = self.workdir / "provision.log"
        self.log_file = self.workdir / "samba.log"
        self.krb5_conf = self.workdir / "krb5.conf"
        self.provision_seconds: float | None = None
        """Wall time of ``samba-tool domain provision`` (None before the first start)."""
        self.start_seconds: float | None = None
        """Wall time from spawning ``samba`` until LDAPS answered, for the last start."""
        self._tls: TLSPaths | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._provisioned = False

    # -- addresses and files -------------------------------------------------------------

    @property
    def ldap_url(self) -> str:
        """``ldap://127.0.0.1:389``: StartTLS required before a simple bind."""
        return f"ldap://{self.host}:389"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}:636"

    @property
    def fqdn(self) -> str:
        return f"{self.host_name}.{self.dns_domain}"

    @property
    def tls(self) -> TLSPaths:
        if self._tls is None:
            raise RuntimeError("SambaDC has no TLS files before start()")
        return self._tls

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    # -- lifecycle -----------------------------------------------------------------------

    def provision(self) -> None:
        """Provision the domain into ``workdir/dc`` (done by :meth:`start` when needed)."""
        empty_conf = self._prepare()
        self._run_tool(
            "provision",
            [
                SAMBA_TOOL,
                "domain",
                "provision",
                f"--configfile={empty_conf}",
                f"--realm={self.realm}",
                f"--domain={self.domain}",
                "--server-role=dc",
                f"--host-name={self.host_name}",
                f"--host-ip={self.host}",
                f"--adminpass={self.admin_password}",
                f"--targetdir={self.target_dir}",
                # No DNS zone: the slowest optional part, and nothing here resolves through it.
                "--dns-backend=NONE",
            ],
            empty_conf,
        )

    def _prepare(self) -> Path:
        """Checks, TLS files and an empty config file for samba-tool; returns the latter."""
        for tool in (SAMBA, SAMBA_TOOL):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found: apt-get install samba samba-ad-dc")
        if self.smb_conf.exists():
            raise RuntimeError(f"{self.target_dir} is already provisioned")
        longest_socket = self.target_dir / "private" / "ldap_priv" / "ldapi"
        if len(str(longest_socket)) > 100:
            raise RuntimeError(
                f"workdir {self.workdir} is too long: Samba's unix sockets below it "
                f"({longest_socket}) must stay under 108 bytes; use a shorter temp dir"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._tls = make_server_tls(
            self.workdir / "tls",
            dns_names=[self.fqdn, "localhost"],
            ip_addresses=[self.host],
            ca=self.ca,
        )
        # An empty config file keeps /etc/samba/smb.conf (shares, log paths, panic
        # action of a stock install) out of the provisioned smb.conf.
        empty_conf = self.workdir / "empty.conf"
        empty_conf.write_text("")
        if not self.krb5_conf.exists():
            self.krb5_conf.write_text("")
        return empty_conf

    def server_options(self) -> dict[str, str]:
        """smb.conf options of this DC, given to provision (or join)."""
        run_dir = self.target_dir / "run"
        return {
            "interfaces": self.host,
            "bind interfaces only": "yes",
            # By default only LDAP (+ the global catalog that comes with it). No smbd, KDC,
            # DNS, NBT, RPC, replication or winbindd: nothing else to start or bound.
            "server services": self.services,
            "tls enabled": "yes",
            "tls keyfile": str(self.tls.key_file),
            "tls certfile": str(self.tls.cert_file),
            "tls cafile": str(self.tls.ca_file),
            # Without these, pid file and sockets land in /run/samba, shared with any other
            # Samba on the machine.
            "pid directory": str(run_dir),
            "ncalrpc dir": str(run_dir / "ncalrpc"),
            "winbindd socket directory": str(run_dir / "winbindd"),
            "ntp signd socket directory": str(run_dir / "ntp_signd"),
            "log file": str(self.log_file),
        }

    def _run_tool(self, what: str, cmd: list[str], conf: Path) -> None:
        """Run samba-tool ``domain provision`` or ``join`` with :meth:`server_options`."""
        cmd = cmd + [f"--option={k}={v}" for k, v in self.server_options().items()]
        started = time.monotonic()
        with open(self.provision_log, "wb") as log:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(conf),
                timeout=600,
                check=False,
            )
        self.provision_seconds = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(
                f"samba-tool domain {what} failed (exit {result.returncode}):\n"
                f"{_tail(self.provision_log)}"
            )
        (self.target_dir / "run").mkdir(parents=True, exist_ok=True)
        self._provisioned = True
        self._say(f"Samba AD DC {what} in {self.provision_seconds:.1f}s ({self.target_dir})")

    def _env(self, conf: Path) -> dict[str, str]:
        return {**_samba_env(conf, self.krb5_conf), **self.env}

    def start(self) -> None:
        """Provision if needed, start ``samba`` in the foreground and wait until LDAPS answers."""
        if self.running:
            raise RuntimeError(f"samba already running (pid {self.pid})")
        self._check_ports_free()
        if not self._provisioned:
            self.provision()
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    SAMBA,
                    "--foreground",
                    "--no-process-group",
                    "--debug-stdout",
                    f"--model={self.process_model}",
                    f"--configfile={self.smb_conf}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Our own session: stop() can reach prefork children through the group.
                start_new_session=True,
                env=self._env(self.smb_conf),
            )
        # Do not outlive a script that forgets stop() (pytest fixtures do call it).
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        self._say(f"Samba AD DC answering on {self.ldaps_url} after {self.start_seconds:.1f}s")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM samba (and its process group) and wait; SIGKILL after ``timeout``."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True: the group id is samba's pid
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self.process_model != "single":
            # With the prefork/standard models, workers may outlive the master briefly.
            _kill_group(pgid, timeout)

    def restart(self) -> None:
        """Stop and start again with the same domain and data."""
        self.stop()
        self.start()

    def __enter__(self) -> SambaDC:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- data ----------------------------------------------------------------------------

    def connect(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        transport: Literal["ldaps", "starttls", "plain"] = "ldaps",
        raise_exceptions: bool = True,
        get_info: str = ldap3.SCHEMA,
    ) -> ldap3.Connection:
        """A bound ldap3 connection (default: Administrator over LDAPS, certificate verified).

        ``user`` may be a DN, a UPN (``alice@otpgate.test``) or ``OTPGATE\\alice``.
        """
        if user is None:
            user, password = self.admin_dn, self.admin_password
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file))
        if transport == "ldaps":
            server = ldap3.Server(self.host, port=636, use_ssl=True, tls=tls, get_info=get_info)
        else:
            server = ldap3.Server(self.host, port=389, tls=tls, get_info=get_info)
        auto_bind = (
            ldap3.AUTO_BIND_TLS_BEFORE_BIND if transport == "starttls" else ldap3.AUTO_BIND_NO_TLS
        )
        return ldap3.Connection(
            server,
            user=user,
            password=password,
            auto_bind=auto_bind,
            raise_exceptions=raise_exceptions,
        )

    def create_user(
        self,
        sam: str,
        password: str,
        *,
        container_dn: str | None = None,
        attributes: Mapping[str, AttrValues] | None = None,
    ) -> str:
        """Create an enabled user (LDAP add over LDAPS as Administrator); return its DN.

        The password must satisfy the domain policy (see :meth:`relax_password_policy`).
        """
        dn = f"CN={sam},{container_dn or self.users_dn}"
        attrs: dict[str, AttrValues] = {
            "objectClass": ["top", "person", "organizationalPerson", "user"],
            "cn": sam,
            "sAMAccountName": sam,
            "userPrincipalName": f"{sam}@{self.dns_domain}",
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": "512",  # NORMAL_ACCOUNT, enabled
        }
        attrs.update(attributes or {})
        conn = self.connect()
        try:
            conn.add(dn, attributes=attrs)
        finally:
            conn.unbind()
        return dn

    def create_group(self, name: str, members: Iterable[str] = ()) -> str:
        """Create a global security group in CN=Users; return its DN."""
        dn = f"CN={name},{self.users_dn}"
        attrs: dict[str, AttrValues] = {
            "objectClass": ["top", "group"],
            "cn": name,
            "sAMAccountName": name,
        }
        member_list = list(members)
        if member_list:
            attrs["member"] = member_list
        conn = self.connect()
        try:
            conn.add(dn, attributes=attrs)
        finally:
            conn.unbind()
        return dn

    def relax_password_policy(self) -> None:
        """Drop complexity, minimum length/age and history from the domain policy."""
        # No schema: ldap3's client-side validator rejects every value of minPwdAge.
        conn = self.connect(get_info=ldap3.NONE)
        try:
            conn.modify(
                self.base_dn,
                {
                    "pwdProperties": [(ldap3.MODIFY_REPLACE, ["0"])],
                    "minPwdLength": [(ldap3.MODIFY_REPLACE, ["0"])],
                    "minPwdAge": [(ldap3.MODIFY_REPLACE, ["0"])],
                    "pwdHistoryLength": [(ldap3.MODIFY_REPLACE, ["0"])],
                },
            )
        finally:
            conn.unbind()

    # -- internals -----------------------------------------------------------------------

    def _check_ports_free(self) -> None:
        busy: list[str] = []
        for port in SAMBA_PORTS:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                # Same as Samba: a port in TIME_WAIT from an earlier run is not "in use".
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    busy.append(str(port))
        if busy:
            raise RuntimeError(
                f"SambaDC needs TCP ports {', '.join(map(str, SAMBA_PORTS))} on {self.host} "
                f"(fixed in Samba) but {', '.join(busy)} is/are in use: stop the other "
                f"LDAP server or Samba DC (another test run?) and try again "
                f"(see: ss -ltnp 'sport = :389')"
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error = "no attempt"
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file))
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(
                    f"samba exited with status {code} during start:\n{_tail(self.log_file)}"
                )
            try:
                server = ldap3.Server(
                    self.host,
                    port=636,
                    use_ssl=True,
                    tls=tls,
                    get_info=ldap3.NONE,
                    connect_timeout=2,
                )
                conn = ldap3.Connection(
                    server,
                    user=self.admin_dn,
                    password=self.admin_password,
                    auto_bind=ldap3.AUTO_BIND_NO_TLS,
                    receive_timeout=5,
                )
                conn.unbind()
            except LDAPException as exc:
                last_error = repr(exc)
                time.sleep(0.1)
                continue
            return
        raise RuntimeError(
            f"samba did not answer on {self.ldaps_url} within {self.start_timeout}s "
            f"({last_error}):\n{_tail(self.log_file)}"
        )

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)


def _samba_env(conf: Path, krb5_conf: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SMB_CONF_PATH"] = str(conf)
    # Never pick up the machine's /etc/krb5.conf (krb5 rejects /dev/null: "Is a directory").
    env["KRB5_CONFIG"] = str(krb5_conf)
    return env


def _kill_group(pgid: int, timeout: float) -> None:
    """SIGKILL what is left of the process group we created for samba, then reap-wait."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _tail(path: Path, limit: int = 8000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError as exc:
        return f"(no log: {exc})"
