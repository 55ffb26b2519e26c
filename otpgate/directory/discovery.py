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
from typing import TYPE_CHECKING, NamedTuple

from otpgate import ber
from otpgate.directory.drive import run_steps_async
from otpgate.directory.ldapdata import SCOPE_BASE, LdapUrl, SearchEntry, parent_dn
from otpgate.errors import DirectoryError, DirectoryUnavailable

if TYPE_CHECKING:
    from otpgate.directory.connection import LdapConnection

_ANY = ber.filter_present(b"objectClass")

Read = tuple[str, tuple[str, ...]]
"""A base-scope read: (DN, attributes); answered with the entry or None."""


def _text(entry: SearchEntry | None, attribute: str) -> str | None:
    value = entry.first(attribute) if entry is not None else None
    return value.decode("utf-8") if value else None


class Pdc(NamedTuple):
    url: str
    where: str
    """Its host name, or "this server" (the DC asked holds the role)."""
    owner: str
    """The role owner: the PDC emulator's NTDS Settings DN (its root DSE's dsServiceName)."""


def same_dn(a: str, b: str) -> bool:
    return a.replace(" ", "").lower() == b.replace(" ", "").lower()


def pdc_emulator(
    base_dn: str, asked: str, template: str
) -> Generator[Read, SearchEntry | None, Pdc]:
    """Steps that find the PDC emulator: its URL, host or "this server", and NTDS DN.

    ``asked``: the URL of the connection the reads go to; ``template``: the first
    configured URL (scheme and port for a DC found by name)."""
    dse = yield ("", ("defaultNamingContext", "dsServiceName"))
    head = _text(dse, "defaultNamingContext") or base_dn
    owner = _text((yield (head, ("fSMORoleOwner",))), "fSMORoleOwner")
    if not owner:
        raise DirectoryError(f"{head} has no fSMORoleOwner: is this an AD domain?")
    this = _text(dse, "dsServiceName")
    if this is not None and same_dn(this, owner):
        return Pdc(asked, "this server", owner)
    # fSMORoleOwner names the NTDS Settings object; its parent is the server object.
    server_dn = parent_dn(owner)
    host = _text((yield (server_dn, ("dNSHostName",))), "dNSHostName")
    if not host:
        raise DirectoryError(f"{server_dn} has no dNSHostName")
    return Pdc(url_for_host(template, host), host, owner)


async def pdc_emulator_url(conn: LdapConnection, base_dn: str, template: str) -> Pdc:
    """Where OTP state is pinned with ``write_url = "discover"``."""

    async def read(request: Read) -> SearchEntry | None:
        dn, attributes = request
        found = await conn.search(dn, _ANY, list(attributes), scope=SCOPE_BASE)
        return found[0] if found else None

    return await run_steps_async(pdc_emulator(base_dn, conn.url.url, template), read)


async def check_is_pdc(conn: LdapConnection, owner: str) -> None:
    """Fail closed unless ``conn`` reached the PDC emulator itself: a URL may name several
    DCs (the domain name, round-robin DNS, a balancer), and a reconnect could then land
    OTP state on another DC.  Read on every new write connection."""
    found = await conn.search("", _ANY, ["dsServiceName"], scope=SCOPE_BASE)
    this = _text(found[0] if found else None, "dsServiceName")
    if this is None or not same_dn(this, owner):
        raise NotThePdc(
            f"{conn.url.url} is {this or 'a server without dsServiceName'}, not the PDC "
            f"emulator {owner}: OTP state is written nowhere else (discovery runs again)"
        )


class NotThePdc(DirectoryUnavailable):
    """A write connection reached another DC than the discovered PDC emulator."""


def url_for_host(template: str, host: str) -> str:
    """``template``'s scheme and port with another host (the PDC emulator)."""
    url = LdapUrl.parse(template)
    return f"{'ldaps' if url.ldaps else 'ldap'}://{host}:{url.port}"
