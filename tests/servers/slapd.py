"""A throwaway OpenLDAP slapd on loopback for the test suite.

Usage::

    with Slapd(tmp_path / "slapd", schema="otpgate") as server:
        server.url          # ldap://127.0.0.1:<free port>   (StartTLS works)
        server.ldaps_url    # ldaps://127.0.0.1:<free port>
        server.ca_file      # trust anchor for both
        dn = server.add_user("alice", "secret", otpgate_user=True)

The directory runs the ACLs shipped in ``schema/acl-openldap.conf`` (with the
otpgate-schema block removed for ``schema="stock"``), so tests see what a site
that follows our documentation sees: only ``cn=otpgate,ou=services,<suffix>``
can touch otpgate state, ``ou=tokens`` and the stock-profile attributes; and
``schema/acl-openldap-config.conf`` in cn=config, so that the service account may
read the access rules (the gateway proves from them that users cannot write their
own OTP state).  ``cn=config`` is the config database's rootdn (the admin password):
tests change the running configuration with :meth:`Slapd.modify_config`.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

import ldap3
from ldap3.core.exceptions import LDAPException

from .tlsca import TLSPaths, make_server_tls

__all__ = ["SLAPD", "Slapd", "free_port", "ldif_entry", "ssha"]

SLAPD = "/usr/sbin/slapd"
SYSTEM_SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_PATH = Path("/usr/lib/ldap")
REPO_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
LOOPBACK = "127.0.0.1"

SchemaProfile = Literal["stock", "otpgate"]

_OTPGATE_ACL_BLOCK = re.compile(
    r"^# >>> otpgate schema.*?^# <<< otpgate schema[^\n]*\n", re.M | re.S
)
_SAFE_LDIF_VALUE = re.compile(
    r"^[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*$"
)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ssha(password: str) -> str:
    """``{SSHA}`` hash for userPassword / rootpw (salted SHA-1, what slappasswd makes)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def ldif_entry(dn: str, attributes: Mapping[str, str | bytes | Iterable[str | bytes]]) -> str:
    """One LDIF add record; values that are not LDIF-safe are base64-encoded."""

    def line(name: str, value: str | bytes) -> str:
        raw = value.encode() if isinstance(value, str) else value
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            text = None
        if (
            text is not None
            and (text == "" or _SAFE_LDIF_VALUE.match(text))
            and not text.endswith(" ")
        ):
            return f"{name}: {text}"
        return f"{name}:: {base64.b64encode(raw).decode('ascii')}"

    lines = [line("dn", dn)]
    for name, values in attributes.items():
        if isinstance(values, str | bytes):
            values = [values]
        lines.extend(line(name, v) for v in values)
    return "\n".join(lines) + "\n"


class Slapd:
    """One slapd process with its own config, database, TLS files and loopback ports.

    ``workdir`` receives everything (``slapd.conf``, ``data/``, ``tls/``, ``slapd.log``).
    Ports are chosen at construction and kept across :meth:`restart`.
    """

    def __init__(
        self,
        workdir: Path | str,
        schema: SchemaProfile = "stock",
        *,
        suffix: str = "dc=example,dc=org",
        start_timeout: float = 30.0,
        extra_config: str = "",
        acl: Literal["shipped", "self-write"] = "shipped",
        global_config: str = "",
        acl_prefix: str = "",
        paged_limit: bool = True,
        admin_password: str | None = None,
        service_password: str | None = None,
        populate: bool = True,
        config_read: Literal["shipped", "all", "none"] = "shipped",
    ) -> None:
        """``acl="self-write"``: a permissive site where every user may write their own entry
        (only the state and token containers are kept for the service account), as many
        sites run; the attack tests use it.

        ``admin_password``/``service_password`` (default: random) and ``populate=False``
        (no base tree: it arrives by replication) are for replicas (``replicated.py``).

        ``config_read``: what the service account may read in cn=config: the access rules
        (``schema/acl-openldap-config.conf``), all of it, or nothing."""
        if schema not in ("stock", "otpgate"):
            raise ValueError(f"schema must be 'stock' or 'otpgate', not {schema!r}")
        if not re.fullmatch(r"dc=[a-z0-9-]+(,dc=[a-z0-9-]+)*", suffix):
            raise ValueError(f"suffix must be lower-case dc=...,dc=... components, not {suffix!r}")
        self.workdir = Path(workdir).resolve()
        self.schema: SchemaProfile = schema
        self.suffix = suffix
        self.start_timeout = start_timeout
        self.extra_config = extra_config
        self.acl = acl
        self.global_config = global_config
        """slapd.conf lines for the global section (e.g. authz-regexp, sasl-secprops)."""
        self.acl_prefix = acl_prefix
        self.paged_limit = paged_limit
        """The service account may read past slapd's default size limit with paged searches
        (``size.prtotal=unlimited``), as docs/WEB.md asks of sites with large inventories or
        many users; False: slapd's defaults."""
        """Access rules put before the project's ACLs (slapd stops at the first match)."""
        self.config_read = config_read
        self.host = LOOPBACK
        self.port = free_port()
        self.ldaps_port = free_port()
        self.admin_dn = f"cn=admin,{suffix}"
        self.admin_password = admin_password or "admin-" + secrets.token_urlsafe(12)
        self.people_dn = f"ou=people,{suffix}"
        self.services_dn = f"ou=services,{suffix}"
        self.groups_dn = f"ou=groups,{suffix}"
        self.tokens_dn = f"ou=tokens,{suffix}"
        self.state_dn = f"ou=otpgate-state,{suffix}"
        self.service_dn = f"cn=otpgate,{self.services_dn}"
        self.service_password = service_password or "svc-" + secrets.token_urlsafe(12)
        self.conf_file = self.workdir / "slapd.conf"
        self.data_dir = self.workdir / "data"
        self.log_file = self.workdir / "slapd.log"
        self.pid_file = self.workdir / "slapd.pid"
        self._admin_pw_file = self.workdir / "admin.pw"
        self._tls: TLSPaths | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._populated = not populate

    # -- addresses and files -------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ldap://127.0.0.1:<port>`` (plain; StartTLS available)."""
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}:{self.ldaps_port}"

    @property
    def tls(self) -> TLSPaths:
        if self._tls is None:
            raise RuntimeError("Slapd has no TLS files before start()")
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

    def start(self) -> None:
        """Start slapd (writing config, TLS files and base tree the first time) and wait."""
        if self.running:
            raise RuntimeError(f"slapd already running (pid {self.pid})")
        if self._tls is None:
            self._prepare()
        urls = f"ldap://{self.host}:{self.port}/ ldaps://{self.host}:{self.ldaps_port}/"
        with open(self.log_file, "ab") as log:
            # -d none: stay in the foreground and print errors (only) to stderr.
            self._proc = subprocess.Popen(
                [SLAPD, "-f", str(self.conf_file), "-h", urls, "-d", "none"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_client_env(),
            )
        # Do not outlive a script that forgets stop() (pytest fixtures do call it).
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        if not self._populated:
            self.add_ldif(self._base_ldif())
            self._populated = True

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM slapd and wait for it (SIGKILL after ``timeout``). Idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def __enter__(self) -> Slapd:
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

    def add_ldif(self, text: str) -> None:
        """Apply LDIF as the rootdn (``ldapmodify -a``: add records, or any changetype)."""
        self._ldap_tool("ldapmodify", ["-a"], text)

    def modify_config(self, text: str) -> None:
        """Apply LDIF to the running cn=config as its rootdn (not kept across restarts)."""
        self._ldap_tool("ldapmodify", [], text, bind_dn="cn=config")

    def add_user(
        self,
        uid: str,
        password: str | None,
        *,
        otpgate_user: bool = False,
        attributes: Mapping[str, str | bytes | Iterable[str | bytes]] | None = None,
    ) -> str:
        """Add an inetOrgPerson ``uid=<uid>,ou=people,<suffix>``; return its DN."""
        dn = f"uid={uid},{self.people_dn}"
        classes = ["inetOrgPerson"] + (["otpgateUser"] if otpgate_user else [])
        attrs: dict[str, str | bytes | Iterable[str | bytes]] = {
            "objectClass": classes,
            "uid": uid,
            "cn": uid,
            "sn": uid,
        }
        if password is not None:
            attrs["userPassword"] = ssha(password)
        attrs.update(attributes or {})
        self.add_ldif(ldif_entry(dn, attrs))
        return dn

    def add_group(self, cn: str, members: Iterable[str]) -> str:
        """Add a groupOfNames ``cn=<cn>,ou=groups,<suffix>``; return its DN."""
        dn = f"cn={cn},{self.groups_dn}"
        self.add_ldif(
            ldif_entry(dn, {"objectClass": "groupOfNames", "cn": cn, "member": list(members)})
        )
        return dn

    def directory_toml(self) -> str:
        """The ``[directory]`` section of an otpgate config file on this server (StartTLS,
        the service account), for the tests that start ``twistd otpgate``."""
        return (
            "[directory]\n"
            'profile = "openldap"\n'
            f'urls = ["{self.url}"]\n'
            "start_tls = true\n"
            f'ca_file = "{self.ca_file}"\n'
            f'base_dn = "{self.suffix}"\n'
            f'bind_dn = "{self.service_dn}"\n'
            f'bind_password = "{self.service_password}"'
        )

    def connect(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        transport: Literal["ldaps", "starttls", "plain"] = "ldaps",
    ) -> ldap3.Connection:
        """A bound ldap3 connection (default: the rootdn over LDAPS, certificate verified)."""
        if user is None:
            user, password = self.admin_dn, self.admin_password
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file))
        if transport == "ldaps":
            server = ldap3.Server(self.host, port=self.ldaps_port, use_ssl=True, tls=tls)
        else:
            server = ldap3.Server(self.host, port=self.port, tls=tls)
        auto_bind = (
            ldap3.AUTO_BIND_TLS_BEFORE_BIND if transport == "starttls" else ldap3.AUTO_BIND_NO_TLS
        )
        return ldap3.Connection(
            server, user=user, password=password, auto_bind=auto_bind, raise_exceptions=True
        )

    # -- internals -----------------------------------------------------------------------

    def _prepare(self) -> None:
        for tool in (SLAPD, "ldapmodify"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found: apt-get install slapd ldap-utils")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self._tls = make_server_tls(self.workdir / "tls", dns_names=["localhost"])
        fd = os.open(self._admin_pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.admin_password)  # ldap tools' -y uses the file's exact bytes
        self.conf_file.write_text(self._config())

    def _limits(self) -> str:
        if not self.paged_limit:
            return ""
        return f'limits dn.exact="{self.service_dn}" size.prtotal=unlimited\n'

    def _acl(self) -> str:
        if self.acl == "self-write":
            service = f'dn.exact="{self.service_dn}"'
            return f"""access to attrs=userPassword
\tby self write
\tby anonymous auth
\tby * none
access to dn.subtree="{self.state_dn}"
\tby {service} write
\tby * none
access to dn.subtree="{self.tokens_dn}"
\tby {service} write
\tby * none
access to *
\tby {service} write
\tby self write
\tby users read
\tby * none
"""
        text = (REPO_SCHEMA_DIR / "acl-openldap.conf").read_text()
        if self.schema != "otpgate":
            text, n = _OTPGATE_ACL_BLOCK.subn("", text)
            if n != 1:
                raise RuntimeError("schema/acl-openldap.conf lost its '# >>> otpgate schema' block")
        return self.acl_prefix + text.replace("dc=example,dc=org", self.suffix)

    def _config_database(self) -> str:
        """The config database: rootdn cn=config, and what the service account reads."""
        if self.config_read == "none":
            rules = ""
        elif self.config_read == "all":
            rules = f'access to * by dn.exact="{self.service_dn}" read by * none\n'
        else:
            text = (REPO_SCHEMA_DIR / "acl-openldap-config.conf").read_text()
            rules = text.replace("dc=example,dc=org", self.suffix)
        return f"""database config
rootdn "cn=config"
rootpw "{ssha(self.admin_password)}"
{rules}"""

    def _config(self) -> str:
        schemas = [
            SYSTEM_SCHEMA_DIR / f"{n}.schema" for n in ("core", "cosine", "inetorgperson", "nis")
        ]
        if self.schema == "otpgate":
            schemas.append(REPO_SCHEMA_DIR / "otpgate.schema")
        includes = "\n".join(f'include "{p}"' for p in schemas)
        tls = self.tls
        return f"""# throwaway slapd for the otpgate tests: written by tests/servers/slapd.py
{includes}

pidfile "{self.pid_file}"
argsfile "{self.workdir / "slapd.args"}"
modulepath "{MODULE_PATH}"
moduleload back_mdb

TLSCACertificateFile "{tls.ca_file}"
TLSCertificateFile "{tls.cert_file}"
TLSCertificateKeyFile "{tls.key_file}"
{self.global_config}
{self._config_database()}
database mdb
maxsize 268435456
suffix "{self.suffix}"
rootdn "{self.admin_dn}"
rootpw "{ssha(self.admin_password)}"
directory "{self.data_dir}"
index objectClass eq
index uid,cn eq
index entryUUID eq
index member eq
index entryCSN eq
{self._limits()}
{self._acl()}
{self.extra_config}
"""

    def _base_ldif(self) -> str:
        dc = self.suffix.split(",", 1)[0].split("=", 1)[1]
        records = [
            ldif_entry(
                self.suffix,
                {"objectClass": ["dcObject", "organization"], "dc": dc, "o": "otpgate tests"},
            )
        ]
        for ou_dn in (
            self.people_dn,
            self.services_dn,
            self.groups_dn,
            self.tokens_dn,
            self.state_dn,
        ):
            ou = ou_dn.split(",", 1)[0].split("=", 1)[1]
            records.append(ldif_entry(ou_dn, {"objectClass": "organizationalUnit", "ou": ou}))
        records.append(
            ldif_entry(
                self.service_dn,
                {
                    "objectClass": ["applicationProcess", "simpleSecurityObject"],
                    "cn": "otpgate",
                    "description": "otpgate gateway service account",
                    "userPassword": ssha(self.service_password),
                },
            )
        )
        return "\n".join(records)

    def _ldap_tool(self, tool: str, args: list[str], stdin: str, bind_dn: str = "") -> str:
        bind = bind_dn or self.admin_dn
        cmd = [tool, "-x", "-H", self.url, "-D", bind, "-y", str(self._admin_pw_file)]
        result = subprocess.run(
            cmd + args,
            input=stdin.encode(),
            capture_output=True,
            env=_client_env(),
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed (exit {result.returncode}): {result.stderr.decode(errors='replace')}"
                f"\n--- input ---\n{stdin}"
            )
        return result.stdout.decode(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(
                    f"slapd exited with status {code} during start:\n{self._log_tail()}"
                )
            try:
                server = ldap3.Server(
                    self.host, port=self.port, get_info=ldap3.NONE, connect_timeout=2
                )
                conn = ldap3.Connection(server, auto_bind=True, receive_timeout=2)
                try:
                    conn.search(
                        "",
                        "(objectClass=*)",
                        search_scope=ldap3.BASE,
                        attributes=["namingContexts"],
                    )
                finally:
                    conn.unbind()
            except LDAPException as exc:
                last_error = repr(exc)
                time.sleep(0.05)
                continue
            return
        raise RuntimeError(
            f"slapd did not answer on {self.url} within {self.start_timeout}s ({last_error}):\n"
            f"{self._log_tail()}"
        )

    def _log_tail(self, limit: int = 8000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-limit:]
        except OSError as exc:
            return f"(no log: {exc})"


def _client_env() -> dict[str, str]:
    """Environment for slapd and ldap-utils that ignores ~/.ldaprc and /etc/ldap/ldap.conf."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDAP")}
    env["LDAPNOINIT"] = "1"
    return env
