"""Find AD's PDC emulator (the fSMORoleOwner of the domain), to pin OTP-state writes to it.

``write_url = "discover"`` (the default on AD).  The role owner is read from the domain
head (the root DSE's ``defaultNamingContext``; ``base_dn`` may be an OU below it).  When
the server we asked is itself the PDC emulator (its root DSE ``dsServiceName`` is the role
owner), its configured URL is kept, so certificates and addresses stay as configured;
otherwise the role owner's ``dNSHostName`` is reached like the first configured URL.

The role can move (transferred, or seized) while the old holder stays up, and every DC
accepts writes: a gateway that kept writing to the old one while others write to the new
one could accept a code twice.  So a write connection is used only while its server says
it holds the role (:func:`confirm_pdc`: the domain head's ``fSMORoleOwner``, read from that
server, is its own ``dsServiceName``), checked when the connection opens and again
before it is used once the last check is ``pdc_check_seconds`` old (``pool.py``); when it
fails, discovery runs again.

The steps are pure (:func:`pdc_emulator`, :func:`confirm_pdc`), run by the gateway (async)
and the CLI (ldap3).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, NamedTuple

from otpgate import ber
from otpgate.directory.drive import run_steps_async
from otpgate.directory.ldapdata import SCOPE_BASE, LdapUrl, SearchEntry, parent_dn
from otpgate.dn import same_dn
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


def _reader(conn: LdapConnection) -> Callable[[Read], Awaitable[SearchEntry | None]]:
    async def read(request: Read) -> SearchEntry | None:
        dn, attributes = request
        found = await conn.search(dn, _ANY, list(attributes), scope=SCOPE_BASE)
        return found[0] if found else None

    return read


async def pdc_emulator_url(conn: LdapConnection, base_dn: str, template: str) -> Pdc:
    """Where OTP state is pinned with ``write_url = "discover"``."""
    return await run_steps_async(pdc_emulator(base_dn, conn.url.url, template), _reader(conn))


def confirm_pdc(base_dn: str, url: str) -> Generator[Read, SearchEntry | None, str]:
    """Steps that confirm the server asked (at ``url``) holds the PDC emulator role now:
    the domain head's ``fSMORoleOwner`` it shows is its own root DSE's ``dsServiceName``.
    Returns that DN; raises :class:`NotThePdc` otherwise: the role moved, or the URL (a
    domain name, round-robin DNS, a balancer) reached another DC."""
    dse = yield ("", ("defaultNamingContext", "dsServiceName"))
    head = _text(dse, "defaultNamingContext") or base_dn
    this = _text(dse, "dsServiceName")
    owner = _text((yield (head, ("fSMORoleOwner",))), "fSMORoleOwner")
    if this is None or owner is None or not same_dn(this, owner):
        raise NotThePdc(
            f"{url} is {this or 'a server without dsServiceName'}, not the PDC emulator "
            f"({owner or f'no fSMORoleOwner on {head}'}): no OTP state is written there"
        )
    return owner


async def confirm_pdc_on(conn: LdapConnection, base_dn: str) -> str:
    """:func:`confirm_pdc` over one of the gateway's connections."""
    return await run_steps_async(confirm_pdc(base_dn, conn.url.url), _reader(conn))


class NotThePdc(DirectoryUnavailable):
    """A write connection's server does not hold the PDC emulator role (now)."""


def url_for_host(template: str, host: str) -> str:
    """``template``'s scheme and port with another host (the PDC emulator)."""
    url = LdapUrl.parse(template)
    return f"{'ldaps' if url.ldaps else 'ldap'}://{host}:{url.port}"
