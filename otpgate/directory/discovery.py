"""Find AD's PDC emulator (the fSMORoleOwner of the domain), to pin OTP-state writes to it."""

from __future__ import annotations

from otpgate import ber
from otpgate.directory.connection import LdapConnection
from otpgate.directory.ldapdata import SCOPE_BASE, DirectoryError, LdapUrl, parent_dn

_ANY = ber.filter_present(b"objectClass")


async def _value(conn: LdapConnection, dn: str, attribute: str) -> bytes | None:
    found = await conn.search(dn, _ANY, [attribute], scope=SCOPE_BASE)
    return found[0].first(attribute) if found else None


async def pdc_emulator_host(conn: LdapConnection, base_dn: str) -> str:
    """The dNSHostName of the domain controller holding the PDC emulator role."""
    owner = await _value(conn, base_dn, "fSMORoleOwner")
    if not owner:
        raise DirectoryError(f"{base_dn} has no fSMORoleOwner: is this an AD domain head?")
    # fSMORoleOwner names the NTDS Settings object; its parent is the server object.
    server_dn = parent_dn(owner.decode("utf-8"))
    host = await _value(conn, server_dn, "dNSHostName")
    if not host:
        raise DirectoryError(f"{server_dn} has no dNSHostName")
    return host.decode("ascii")


def url_for_host(template: str, host: str) -> str:
    """``template``'s scheme and port with another host (the PDC emulator)."""
    url = LdapUrl.parse(template)
    return f"{'ldaps' if url.ldaps else 'ldap'}://{host}:{url.port}"
