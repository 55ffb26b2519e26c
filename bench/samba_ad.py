"""A throwaway Samba AD DC for the benchmarks, set up as an AD site runs otpgate.

The DC is the test suite's :class:`tests.servers.samba.SambaDC` (realm OTPGATE.TEST, its own
CA, loopback only, fixed ports 389/636/3268/3269 on 127.0.0.1), with two changes:

* Samba's default process model, ``prefork`` (the tests use ``single``, which Samba does
  not recommend for production): every Samba process is counted, see :func:`samba_processes`.
* ``ldap server require strong auth = no``, so that simple binds are accepted on plain
  ``ldap://`` too: ``../shared/bench/ldapbind_load.py`` speaks no TLS, and the direct target
  binds with it.  otpgate still reaches the DC over LDAPS, certificate verified.

On it: ``OU=bench users`` with the users, an unprivileged service account in it and
``OU=otpgate state`` delegated to that account exactly as ``schema/ad/README.md`` §0 says
(create/delete organizationalRole children, read/write their properties).  The users'
passwords pass the domain's default complexity rules.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3  # type: ignore[import-untyped]
from ldap3.protocol.formatters.formatters import format_sid  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers.samba import SAMBA_PORTS, SAMBA_TOOL, SambaDC  # noqa: E402

ORGANIZATIONAL_ROLE = "a8df74bf-c5ea-11d1-bbcb-0080c76670c0"
"""schemaIDGUID of organizationalRole, the class of otpgate's state entries on AD."""


class BenchDC(SambaDC):
    """SambaDC with the prefork model and simple binds allowed without TLS (see above)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, process_model="prefork", verbose=False)

    def provision(self) -> None:
        super().provision()
        # samba-tool writes only some of its --option values into smb.conf, not this one.
        text = self.smb_conf.read_text()
        if "[global]\n" not in text:
            raise RuntimeError(f"{self.smb_conf}: no [global] section")
        self.smb_conf.write_text(
            text.replace("[global]\n", "[global]\n\tldap server require strong auth = no\n", 1)
        )


@dataclass(frozen=True)
class AdSite:
    dc: BenchDC
    users_ou: str
    state_dn: str
    service_dn: str
    service_password: str


def samba_ports_busy(host: str = "127.0.0.1") -> list[int]:
    """Which of Samba's fixed ports something else holds (TIME_WAIT does not count)."""
    busy = []
    for port in SAMBA_PORTS:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                busy.append(port)
    return busy


def wait_for_samba_ports(timeout: float, poll: float = 30.0) -> None:
    """Wait (never interfere) while another Samba or LDAP server holds 389/636/3268/3269."""
    deadline = time.monotonic() + timeout
    while busy := samba_ports_busy():
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"127.0.0.1 ports {busy} are still in use after {timeout:.0f} s (another Samba "
                "DC, e.g. a test run?); the AD targets need them: try again later"
            )
        print(f"waiting: 127.0.0.1 ports {busy} in use (another Samba?)", file=sys.stderr)
        time.sleep(poll)


def samba_processes(dc: SambaDC) -> dict[str, int]:
    """Every process of the DC, as ``samba:<name>`` (``samba:ldap(0)``...): samba runs in a
    session of its own (SambaDC.start), so its session id is its pid."""
    if dc.pid is None:
        raise RuntimeError("samba is not running")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat.split(" (", 1)[1].rsplit(")", 1)
        if int(rest.split()[3]) == dc.pid:  # the session id
            found[f"samba:{name}"] = int(entry.name)
    return found


def _admin_options(dc: SambaDC) -> list[str]:
    """samba-tool over LDAPS, certificate and name checked (Samba's client will not check a
    name against an IP address: ``localhost`` is in the DC's certificate)."""
    return [
        "-H", "ldaps://localhost",
        f"--simple-bind-dn={dc.admin_dn}",
        f"--password={dc.admin_password}",
        f"--option=tls cafile={dc.ca_file}",
        "--option=tls verify peer=ca_and_name",
    ]


def _tool_env(work: Path) -> dict[str, str]:
    empty = work / "empty-client.conf"
    empty.write_text("")
    return {**os.environ, "SMB_CONF_PATH": str(empty), "KRB5_CONFIG": str(empty)}


def user_password(k: int) -> str:
    return f"Ad-bench-{k}-Pw1!"


def start_site(work: Path, users: int) -> tuple[AdSite, list[dict[str, Any]]]:
    """Provision and start the DC, add ``users`` users, the service account and the delegated
    state OU.  Returns the site and the users (name, dn, password, secret_hex, counter)."""
    dc = BenchDC(work / "samba")
    dc.start()
    try:
        return _populate(dc, work, users)
    except BaseException:
        dc.stop()
        raise


def _populate(dc: BenchDC, work: Path, count: int) -> tuple[AdSite, list[dict[str, Any]]]:
    users_ou = f"OU=bench users,{dc.base_dn}"
    state_dn = f"OU=otpgate state,{dc.base_dn}"
    service_password = "Svc-" + os.urandom(8).hex() + "-A1!"
    conn = dc.connect(get_info=ldap3.NONE)
    users = []
    try:
        for ou in (users_ou, state_dn):
            if not conn.add(ou, ["top", "organizationalUnit"]):
                raise RuntimeError(f"adding {ou}: {conn.result}")
        service_dn = _add_user(conn, dc, "otpgate-svc", service_password, users_ou)
        for k in range(count):
            name = f"ad{k}"
            password = user_password(k)
            users.append({
                "name": name,
                "dn": _add_user(conn, dc, name, password, users_ou),
                "password": password,
                "secret_hex": os.urandom(20).hex(),
                "counter": 0,
            })
        if not conn.search(service_dn, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"]):
            raise RuntimeError(f"reading {service_dn}: {conn.result}")
        sid = format_sid(conn.response[0]["raw_attributes"]["objectSid"][0])
    finally:
        conn.unbind()
    sddl = (f"(OA;CIIO;RPWP;;{ORGANIZATIONAL_ROLE};{sid})"
            f"(OA;;CCDC;{ORGANIZATIONAL_ROLE};;{sid})")
    subprocess.run(
        [SAMBA_TOOL, "dsacl", "set", *_admin_options(dc), f"--objectdn={state_dn}",
         f"--sddl={sddl}"],
        env=_tool_env(work), check=True, capture_output=True, text=True, timeout=120,
    )
    return AdSite(dc, users_ou, state_dn, service_dn, service_password), users


def first_logons(dc: SambaDC, users: list[dict[str, Any]]) -> None:
    """Bind as every user once.  A user's first logon writes lastLogonTimestamp (later ones
    only every 9-14 days: msDS-LogonTimeSyncInterval), so without this the first target to
    bind would be measured on writes a real site's users made long ago."""
    server = ldap3.Server(dc.host, port=389, get_info=ldap3.NONE)
    conn = ldap3.Connection(server)
    conn.open()
    try:
        for u in users:
            if not conn.rebind(u["dn"], u["password"]):
                raise RuntimeError(f"binding as {u['dn']}: {conn.result}")
    finally:
        conn.unbind()


def _add_user(conn: ldap3.Connection, dc: SambaDC, sam: str, password: str, ou: str) -> str:
    dn = f"CN={sam},{ou}"
    ok = conn.add(dn, attributes={
        "objectClass": ["top", "person", "organizationalPerson", "user"],
        "cn": sam,
        "sAMAccountName": sam,
        "userPrincipalName": f"{sam}@{dc.dns_domain}",
        "unicodePwd": f'"{password}"'.encode("utf-16-le"),
        "userAccountControl": "512",  # NORMAL_ACCOUNT, enabled
    })
    if not ok:
        raise RuntimeError(f"adding {dn}: {conn.result}")
    return dn


def write_users(path: Path, users: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(users))
    return path


def otpgate_sections(site: AdSite, work: Path) -> str:
    """[directory] and [vault] of an otpgate config on the site (makes the keyring): the AD
    profile over LDAPS, the unprivileged service account, OTP state below ``state_dn``,
    OTP-state writes to the PDC emulator (discovered: this DC)."""
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "otpgate"), "keygen", str(work / "keyring.json"), "--key-id", "bench"],
        check=True,
        capture_output=True,
    )
    dc = site.dc
    return f"""
[directory]
profile = "ad"
urls = ["{dc.ldaps_url}"]
ca_file = "{dc.ca_file}"
base_dn = "{dc.base_dn}"
bind_dn = "{site.service_dn}"
bind_password = "{site.service_password}"
state_dn = "{site.state_dn}"
[vault]
keyring = "keyring.json"
"""
