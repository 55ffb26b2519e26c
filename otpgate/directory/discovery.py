"""Find AD's PDC emulator (the fSMORoleOwner of the domain), to pin OTP-state writes to it.

``write_url = "discover"`` (the default on AD).  The role owner is read from the domain
head (the root DSE's ``defaultNamingContext``; ``base_dn`` may be an OU below it).  When
the server we asked is itself the PDC emulator (its root DSE ``dsServiceName`` is the role
owner), its configured URL is kept, so certificates and addresses stay as configured;
otherwise the role owner's ``dNSHostName`` is reached like the first configured URL.
The steps are pure (:func:`pdc_emulator`), run by the gateway (async) and the CLI (ldap3).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from otpgate import ber
from otpgate.directory.ldapdata import SCOPE_BASE, DirectoryError, LdapUrl, SearchEntry, parent_dn

if TYPE_CHECKING:
    from otpgate.directory.connection import LdapConnection

_ANY = ber.filter_present(b"objectClass")

Read = tuple[str, tuple[str, ...]]
"""A base-scope read: (DN, attributes); answered with the entry or None."""


def _text(entry: SearchEntry | None, attribute: str) -> str | None:
    value = entry.first(attribute) if entry is not None else None
    return value.decode("utf-8") if value else None


def pdc_emulator(
    base_dn: str, asked: str, template: str
) -> Generator[Read, SearchEntry | None, tuple[str, str]]:
    """Steps that find the PDC emulator: returns (its URL, its host or "this server").

    ``asked``: the URL of the connection the reads go to; ``template``: the first
    configured URL (scheme and port for a DC found by name)."""
    dse = yield ("", ("defaultNamingContext", "dsServiceName"))
    head = _text(dse, "defaultNamingContext") or base_dn
    owner = _text((yield (head, ("fSMORoleOwner",))), "fSMORoleOwner")
    if not owner:
        raise DirectoryError(f"{head} has no fSMORoleOwner: is this an AD domain?")
    this = _text(dse, "dsServiceName")
    if this is not None and this.replace(" ", "").lower() == owner.replace(" ", "").lower():
        return asked, "this server"
    # fSMORoleOwner names the NTDS Settings object; its parent is the server object.
    server_dn = parent_dn(owner)
    host = _text((yield (server_dn, ("dNSHostName",))), "dNSHostName")
    if not host:
        raise DirectoryError(f"{server_dn} has no dNSHostName")
    return url_for_host(template, host), host


async def pdc_emulator_url(conn: LdapConnection, base_dn: str, template: str) -> str:
    """The URL OTP state is pinned to with ``write_url = "discover"``."""
    step = pdc_emulator(base_dn, conn.url.url, template)
    answer: SearchEntry | None = None
    while True:
        try:
            dn, attributes = step.send(answer)
        except StopIteration as done:
            url: str = done.value[0]
            return url
        found = await conn.search(dn, _ANY, list(attributes), scope=SCOPE_BASE)
        answer = found[0] if found else None


async def pdc_emulator_host(conn: LdapConnection, base_dn: str) -> str:
    """The dNSHostName of the domain controller holding the PDC emulator role."""
    found = await conn.search(base_dn, _ANY, ["fSMORoleOwner"], scope=SCOPE_BASE)
    owner = found[0].first("fSMORoleOwner") if found else None
    if not owner:
        raise DirectoryError(f"{base_dn} has no fSMORoleOwner: is this an AD domain head?")
    server_dn = parent_dn(owner.decode("utf-8"))
    found = await conn.search(server_dn, _ANY, ["dNSHostName"], scope=SCOPE_BASE)
    host = found[0].first("dNSHostName") if found else None
    if not host:
        raise DirectoryError(f"{server_dn} has no dNSHostName")
    return host.decode("ascii")


def url_for_host(template: str, host: str) -> str:
    """``template``'s scheme and port with another host (the PDC emulator)."""
    url = LdapUrl.parse(template)
    return f"{'ldaps' if url.ldaps else 'ldap'}://{host}:{url.port}"
