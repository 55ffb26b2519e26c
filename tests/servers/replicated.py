"""OpenLDAP multi-provider replication on loopback for the test suite.

Usage::

    with MultiProvider(tmp_path / "repl") as repl:
        repl.a, repl.b      # two providers (serverID 1 and 2), each a syncrepl consumer of
                            # the other (``multiprovider on``, a.k.a. mirror mode)
        repl.consumer       # a read-only consumer of provider a (refers writes to a)
        repl.wait_converged()   # every server holds the same contextCSN set (bounded)

Each is a :class:`Slapd` (slapd.conf, the project's ACLs, TLS, loopback ports) sharing one
rootdn password and one service account: provider ``a`` writes the base tree and the others
receive it by replication.  Replication binds as the rootdn (it bypasses the ACLs, so every
attribute travels, the OTP state included).  ``a.stop()``/``a.start()`` stop and restart one
provider on the same ports and data; the others retry every second.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

import ldap3

from .slapd import SchemaProfile, Slapd

__all__ = ["MultiProvider", "context_csns"]


def _syncrepl(rid: int, provider: Slapd) -> str:
    return (
        f"syncrepl rid={rid:03d} provider={provider.url} bindmethod=simple "
        f'binddn="{provider.admin_dn}" credentials="{provider.admin_password}" '
        f'searchbase="{provider.suffix}" type=refreshAndPersist retry="1 +" '
        "timeout=3 network-timeout=3 schemachecking=off\n"
    )


def context_csns(server: Slapd) -> set[str]:
    """The contextCSN values of ``server``'s suffix entry (rootdn over LDAPS)."""
    conn = server.connect()
    try:
        conn.search(
            server.suffix, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["contextCSN"]
        )
        entry: Any = conn.response[0] if conn.response else {"raw_attributes": {}}
        return {v.decode() for v in entry["raw_attributes"].get("contextCSN", [])}
    finally:
        conn.unbind()


class MultiProvider:
    """Two multi-provider slapds (``a``, ``b``) and a read-only consumer of ``a``."""

    def __init__(
        self,
        workdir: Path | str,
        schema: SchemaProfile = "stock",
        config_readable: bool = False,
        **slapd: Any,
    ) -> None:
        """``config_readable``: provider ``b`` lets the service account read all of its
        cn=config (olcServerID, olcMultiProvider); ``a`` and the consumer only the access
        rules (``schema/acl-openldap-config.conf``), never the replication settings."""
        root = Path(workdir)
        self.a = Slapd(root / "provider-a", schema, **slapd)
        shared = {
            "admin_password": self.a.admin_password,
            "service_password": self.a.service_password,
            "populate": False,
        }
        self.b = Slapd(root / "provider-b", schema, **shared, **slapd)
        self.consumer = Slapd(root / "consumer", schema, **shared, **slapd)
        for sid, me, peer in ((1, self.a, self.b), (2, self.b, self.a)):
            me.global_config += f"moduleload syncprov\nserverID {sid}\n"
            me.extra_config += (
                "overlay syncprov\nsyncprov-checkpoint 20 1\n"
                + _syncrepl(sid, peer)
                + "multiprovider on\n"
            )
        if config_readable:
            self.b.config_read = "all"
        self.consumer.extra_config += _syncrepl(100, self.a) + f"updateref {self.a.url}\n"

    @property
    def servers(self) -> tuple[Slapd, Slapd, Slapd]:
        return self.a, self.b, self.consumer

    def start(self) -> None:
        try:
            for server in self.servers:
                server.start()
            self.wait_converged()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def wait_converged(self, timeout: float = 30.0, servers: tuple[Slapd, ...] = ()) -> set[str]:
        """Poll the contextCSNs of the running ``servers`` (default: all running) until they
        are the same non-empty set; return it.  Raises after ``timeout`` seconds."""
        targets = servers or tuple(s for s in self.servers if s.running)
        deadline = time.monotonic() + timeout
        seen: list[set[str]] = []
        while time.monotonic() < deadline:
            seen = [context_csns(s) for s in targets]
            if seen[0] and all(s == seen[0] for s in seen):
                return seen[0]
            time.sleep(0.1)
        raise RuntimeError(f"replication did not converge within {timeout}s: {seen}")

    def __enter__(self) -> MultiProvider:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
