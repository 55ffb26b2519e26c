"""Two Samba AD DCs of one domain: dc1 on 127.0.0.1 (PDC emulator), dc2 joined on 127.0.0.2.

Needs 127.0.0.2 on an interface (Samba binds configured addresses only) and Samba's fixed
ports free on both addresses, so it is meant to run inside a network namespace of its own
(``tests/integration/samba2_scenario.py`` creates one). Usage::

    pair = SambaPair(workdir)
    pair.start()                     # provision dc1, join dc2, replication both ways
    pair.dc1.ldap_url, pair.dc2.ldap_url, pair.ca_file   # one CA for both certificates
    pair.replicate()                 # pull dc1's changes to dc2 now
    pair.transfer_pdc()              # dc2 takes the PDC emulator role (both DCs stay up)
    pair.stop()

What it takes (docs/DECISIONS.md has the story): the DCs run ``cldap``, ``rpc``, ``drepl``
and ``kdc``; names (``dc1.otpgate.test``, ``<NTDS GUID>._msdcs.otpgate.test``) resolve
through nss_wrapper's hosts file (no DNS zone, no ``dns hostsfile`` in Debian's Samba);
a krb5.conf lists both KDCs; the replication SPN that ``samba_spnupdate`` would add is
added by hand; the join authenticates as ``OTPGATE\\Administrator``.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import ldap3

from .samba import SAMBA_TOOL, SambaDC

__all__ = ["NSS_WRAPPER", "JoinedDC", "SambaPair"]

NSS_WRAPPER = "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so"
DRS_SPN_CLASS = "E3514235-4B06-11D1-AB04-00C04FC2DCD2"
"""The DRS RPC interface: the SPN ``<class>/<NTDS GUID>/<domain>`` replication asks for."""
SERVICES = "ldap cldap rpc drepl kdc"


class JoinedDC(SambaDC):
    """A second DC: ``samba-tool domain join`` instead of provision."""

    def __init__(self, workdir: Path, first: SambaDC, **kwargs: object) -> None:
        super().__init__(workdir, admin_password=first.admin_password, **kwargs)  # type: ignore[arg-type]
        self.first = first

    def provision(self) -> None:
        empty_conf = self._prepare()
        self._run_tool(
            "join",
            [
                SAMBA_TOOL,
                "domain",
                "join",
                self.dns_domain,
                "DC",
                f"--server={self.first.host}",
                f"--configfile={empty_conf}",
                f"--targetdir={self.target_dir}",
                "--dns-backend=NONE",
                "--use-kerberos=off",
                # Without the domain, an empty config means WORKGROUP\Administrator (49).
                f"--username={self.domain}\\Administrator",
                f"--password={self.admin_password}",
            ],
            empty_conf,
        )

    def server_options(self) -> dict[str, str]:
        return {
            **super().server_options(),
            "workgroup": self.domain,
            "realm": self.realm,
            "netbios name": self.host_name.upper(),
        }


class SambaPair:
    def __init__(self, workdir: Path | str, verbose: bool = True) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts_file = self.workdir / "hosts"
        self.krb5_conf = self.workdir / "krb5.conf"
        env = {
            "LD_PRELOAD": NSS_WRAPPER,
            "NSS_WRAPPER_HOSTS": str(self.hosts_file),
            "KRB5_CONFIG": str(self.krb5_conf),
        }
        self.env = env
        self.dc1 = SambaDC(
            self.workdir / "dc1", services=SERVICES, env=env, verbose=verbose
        )
        self.dc2: JoinedDC | None = None
        self._verbose = verbose
        self._aliases: dict[str, list[str]] = {
            "127.0.0.1": ["dc1.otpgate.test", "dc1"],
            "127.0.0.2": ["dc2.otpgate.test", "dc2"],
        }
        self.timings: dict[str, float] = {}
        self._stamp = 0

    @property
    def ca_file(self) -> Path:
        return self.dc1.ca_file

    def start(self) -> None:
        if not os.path.exists(NSS_WRAPPER):
            raise RuntimeError(f"{NSS_WRAPPER} missing: apt-get install libnss-wrapper")
        realm = SambaDC.realm
        self.krb5_conf.write_text(
            f"[libdefaults]\n default_realm = {realm}\n dns_lookup_kdc = false\n"
            f" dns_lookup_realm = false\n[realms]\n {realm} = {{\n"
            f"  kdc = 127.0.0.1\n  kdc = 127.0.0.2\n }}\n"
        )
        self._write_hosts()
        started = time.monotonic()
        self.dc1.start()
        self.timings["dc1_provision_start_s"] = time.monotonic() - started
        self._register(self.dc1)
        started = time.monotonic()
        self.dc2 = JoinedDC(
            self.workdir / "dc2",
            self.dc1,
            host="127.0.0.2",
            host_name="dc2",
            services=SERVICES,
            ca=self.dc1.tls,
            env=self.env,
            verbose=self._verbose,
        )
        self.dc2.start()
        self.timings["dc2_join_start_s"] = time.monotonic() - started
        self._register(self.dc2)
        started = time.monotonic()
        self.replicate()
        self.replicate(source="dc2", destination="dc1")
        self.timings["first_replication_s"] = time.monotonic() - started

    def stop(self) -> None:
        if self.dc2 is not None:
            self.dc2.stop()
        self.dc1.stop()

    def ntds_guid(self, dc: SambaDC) -> str:
        conn = dc.connect(get_info=ldap3.NONE)
        try:
            conn.search("", "(objectClass=*)", search_scope=ldap3.BASE,
                        attributes=["dsServiceName"])
            ntds = conn.response[0]["attributes"]["dsServiceName"]
            ntds = ntds[0] if isinstance(ntds, list) else ntds
            conn.search(ntds, "(objectClass=*)", search_scope=ldap3.BASE,
                        attributes=["objectGUID"])
            raw = conn.response[0]["raw_attributes"]["objectGUID"][0]
            return str(uuid.UUID(bytes_le=raw))
        finally:
            conn.unbind()

    def _register(self, dc: SambaDC) -> None:
        """Name ``<NTDS GUID>._msdcs`` in the hosts file and add the DRS SPN that
        ``samba_spnupdate`` (the ``dnsupdate`` service, not run here) would add."""
        guid = self.ntds_guid(dc)
        self._aliases[dc.host].append(f"{guid}._msdcs.{dc.dns_domain}")
        self._write_hosts()
        conn = self.dc1.connect(get_info=ldap3.NONE, raise_exceptions=False)
        try:
            account = f"CN={dc.host_name.upper()},OU=Domain Controllers,{dc.base_dn}"
            spn = f"{DRS_SPN_CLASS}/{guid}/{dc.dns_domain}"
            conn.modify(account, {"servicePrincipalName": [(ldap3.MODIFY_ADD, [spn])]})
            if conn.result["result"] not in (0, 20):  # 20: already there
                raise RuntimeError(f"adding SPN {spn} to {account}: {conn.result}")
        finally:
            conn.unbind()

    def _write_hosts(self) -> None:
        text = "".join(f"{ip} {' '.join(names)}\n" for ip, names in self._aliases.items())
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text(text)
        # nss_wrapper reloads when st_mtime (whole seconds) differs: a new second each write.
        self._stamp = max(int(time.time()), self._stamp + 1)
        os.utime(tmp, (self._stamp, self._stamp))
        tmp.replace(self.hosts_file)

    def replicate(self, source: str = "dc1", destination: str = "dc2",
                  nc: str = SambaDC.base_dn, timeout: float = 60) -> None:
        """``samba-tool drs replicate`` now, retried until ``timeout`` (after a DC restarts,
        the other's cached DRS connection first fails with WERR_NETNAME_DELETED)."""
        assert self.dc2 is not None
        dc = self.dc1 if destination == "dc1" else self.dc2
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [SAMBA_TOOL, "drs", "replicate", destination, source, nc,
                 f"--configfile={dc.smb_conf}",
                 f"--username={SambaDC.domain}\\Administrator",
                 f"--password={self.dc1.admin_password}"],
                stdin=subprocess.DEVNULL, capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
                env=dc._env(dc.smb_conf), check=False,
            )
            if result.returncode == 0:
                return
            if time.monotonic() + 1 > deadline:
                raise RuntimeError(
                    f"samba-tool drs replicate {destination} {source} failed "
                    f"(exit {result.returncode}): "
                    f"{result.stdout.decode(errors='replace')[-3000:]}"
                    f"{result.stderr.decode(errors='replace')[-3000:]}"
                )
            time.sleep(1)

    def role_owner(self, dc: SambaDC) -> str:
        """The PDC emulator role owner (NTDS Settings DN) as ``dc`` shows it now."""
        conn = dc.connect(get_info=ldap3.NONE)
        try:
            conn.search(dc.base_dn, "(objectClass=*)", search_scope=ldap3.BASE,
                        attributes=["fSMORoleOwner"])
            owner = conn.response[0]["attributes"]["fSMORoleOwner"]
            return str(owner[0] if isinstance(owner, list) else owner)
        finally:
            conn.unbind()

    def service_name(self, dc: SambaDC) -> str:
        """``dc``'s own NTDS Settings DN (its root DSE's dsServiceName)."""
        conn = dc.connect(get_info=ldap3.NONE)
        try:
            conn.search("", "(objectClass=*)", search_scope=ldap3.BASE,
                        attributes=["dsServiceName"])
            name = conn.response[0]["attributes"]["dsServiceName"]
            return str(name[0] if isinstance(name, list) else name)
        finally:
            conn.unbind()

    def transfer_pdc(self, timeout: float = 60) -> None:
        """``samba-tool fsmo transfer --role=pdc`` against dc2 as the domain's Administrator:
        dc2 takes the PDC emulator role from dc1, both staying up.  Returns once both DCs
        name dc2 as the role owner; retried until ``timeout`` (as ``replicate``)."""
        assert self.dc2 is not None
        dc2 = self.dc2
        wanted = self.service_name(dc2).lower()
        deadline = time.monotonic() + timeout
        result: subprocess.CompletedProcess[bytes] | None = None
        while True:
            owners = {self.role_owner(dc).lower() for dc in (self.dc1, dc2)}
            if owners == {wanted}:
                return
            if result is None or result.returncode != 0:
                result = subprocess.run(
                    [SAMBA_TOOL, "fsmo", "transfer", "--role=pdc", "-H", f"ldap://{dc2.host}",
                     f"--configfile={dc2.smb_conf}", "--use-kerberos=off",
                     f"--username={SambaDC.domain}\\Administrator",
                     f"--password={self.dc1.admin_password}"],
                    stdin=subprocess.DEVNULL, capture_output=True,
                    timeout=max(1.0, deadline - time.monotonic()),
                    env=dc2._env(dc2.smb_conf), check=False,
                )
            if time.monotonic() + 1 > deadline:
                raise RuntimeError(
                    f"samba-tool fsmo transfer --role=pdc to dc2: role owners {owners} "
                    f"(exit {result.returncode}): "
                    f"{result.stdout.decode(errors='replace')[-3000:]}"
                    f"{result.stderr.decode(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
