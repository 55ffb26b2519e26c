"""The three directory set-ups every store test runs against, behind one small interface."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otpgate.config import Config, parse_config
from otpgate.vault import keygen
from tests.servers import SambaDC, Slapd

_serial = itertools.count(1)
USER_PASSWORD = "Pa55-word!otp"


@dataclass
class Backend:
    name: str
    profile: str
    server: Any
    keyring: Path

    @property
    def is_ad(self) -> bool:
        return self.profile == "ad"

    def directory_section(self, **overrides: Any) -> dict[str, Any]:
        s = self.server
        if isinstance(s, SambaDC):
            section = {
                "urls": [s.ldaps_url],
                "base_dn": s.base_dn,
                "bind_dn": s.admin_dn,
                "bind_password": s.admin_password,
                "domains": [s.domain],
                # AD needs a state container (users may write their own attributes).
                "state_dn": self.state_dn(),
            }
        else:
            section = {
                "urls": [s.url],
                "start_tls": True,
                "base_dn": s.suffix,
                "bind_dn": s.service_dn,
                "bind_password": s.service_password,
            }
        section.update(profile=self.profile, ca_file=str(s.ca_file), timeout=5)
        section.update(overrides)
        return section

    def config(self, directory: dict[str, Any] | None = None, **sections: Any) -> Config:
        doc = {
            "directory": self.directory_section(**(directory or {})),
            "vault": {"keyring": str(self.keyring)},
            **sections,
        }
        return parse_config(doc, Path("/"))

    def new_user(self, prefix: str = "u", **attributes: Any) -> tuple[str, str]:
        """A fresh user; returns (bare login name, DN)."""
        name = f"{prefix}{next(_serial)}"
        if isinstance(self.server, SambaDC):
            dn = self.server.create_user(name, USER_PASSWORD, attributes=attributes or None)
        else:
            attrs = {"mail": f"{name}@example.org", **attributes}
            dn = self.server.add_user(
                name, USER_PASSWORD, otpgate_user=False, attributes=attrs
            )
        return name, dn

    def upn(self, name: str) -> str:
        if isinstance(self.server, SambaDC):
            return f"{name}@{self.server.dns_domain}"
        return f"{name}@example.org"

    def inventory_dn(self) -> str:
        """The token inventory container (created on Samba on first use)."""
        if not isinstance(self.server, SambaDC):
            return self.server.tokens_dn
        return self.ensure_ou("OTP Tokens")

    def state_dn(self) -> str:
        """The OTP state container of the AD backend (created on first use)."""
        return self.ensure_ou("otpgate state")

    def ensure_ou(self, name: str, parent: str | None = None) -> str:
        """An OU on Samba, created if missing."""
        parent = parent or self.server.base_dn
        dn = f"OU={name},{parent}"
        conn = self.admin()
        try:
            conn.search(parent, f"(ou={name})", search_scope="LEVEL")
            if not conn.entries:
                conn.add(dn, ["top", "organizationalUnit"])
        finally:
            conn.unbind()
        return dn

    def state_holder(self, dn: str, config: Config | None = None) -> str:
        """The DN whose attributes hold the OTP state of the user ``dn``."""
        config = config or self.config()
        if config.directory.state_dn is None:
            return dn
        id_attribute = config.directory.profile.id_attribute
        (entry_id,) = self.raw_values(dn, id_attribute)
        rdn = str(uuid.UUID(bytes_le=entry_id)) if self.is_ad else entry_id.decode().lower()
        return f"cn={rdn},{config.directory.state_dn}"

    def state_values(self, dn: str, attribute: str, config: Config | None = None) -> list[bytes]:
        """The raw values of one OTP state attribute of the user ``dn``, wherever they live."""
        return self.raw_values(self.state_holder(dn, config), attribute)

    def admin(self) -> Any:
        """A bound ldap3 connection with full rights (LDAPS, certificate verified)."""
        if isinstance(self.server, SambaDC):
            return self.server.connect()
        s: Slapd = self.server
        return s.connect(s.admin_dn, s.admin_password)

    def raw_values(self, dn: str, attribute: str) -> list[bytes]:
        conn = self.admin()
        try:
            conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=[attribute])
            entry = conn.response[0] if conn.response else {"raw_attributes": {}}
            return list(entry["raw_attributes"].get(attribute, []))
        finally:
            conn.unbind()


def make_backend(name: str, request: Any, keyring_dir: Path) -> Backend:
    keyring = keyring_dir / "keyring.json"
    if not keyring.exists():
        keygen(keyring, "k1")
    if name == "slapd-stock":
        return Backend(name, "openldap", request.getfixturevalue("slapd"), keyring)
    if name == "slapd-schema":
        return Backend(name, "openldap-schema", request.getfixturevalue("slapd_otpgate"), keyring)
    return Backend(name, "ad", request.getfixturevalue("samba_dc"), keyring)


BACKENDS = ["slapd-stock", "slapd-schema", "samba"]
