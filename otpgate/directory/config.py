"""``[directory]``: where the directory is, how otpgate reaches it, where the state lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from otpgate.codec import PLAIN_REFUSED, AttributeSpec, Format, Purpose, Syntax, check_format
from otpgate.configfile import (
    Section,
    in_range,
    is_loopback_host,
    ldap_url,
    non_negative,
    positive,
    secret,
)
from otpgate.directory.profiles import KNOWN_ATTRIBUTES, PROFILES, Profile
from otpgate.errors import CodecError, ConfigError

ROLE_PURPOSE = {
    "seed": Purpose.SEED,
    "tokens": Purpose.TOKEN,
    "used": Purpose.USED,
    "inventory": Purpose.INVENTORY,
}


@dataclass(frozen=True)
class MappedAttribute:
    spec: AttributeSpec
    format: Format


@dataclass(frozen=True)
class DirectoryConfig:
    urls: tuple[str, ...]
    base_dn: str
    bind_dn: str
    bind_password: str = field(repr=False)
    profile: Profile
    seed: MappedAttribute
    tokens: MappedAttribute
    used: MappedAttribute
    inventory: MappedAttribute
    write_url: str | None = None
    """Pinned server for OTP state ("discover": AD PDC emulator, the default on AD); None: the
    URLs in order (OpenLDAP only; refused on multi-provider replication, see below)."""
    pdc_check_seconds: float = 60.0
    """With "discover": a write connection is used only while its DC says it holds the PDC
    emulator role, checked when it opens and again before use once this old (a role moved
    while the old holder stays up is noticed within this time)."""
    allow_unpinned_multi_provider: bool = False
    """OpenLDAP without write_url: keep OTP logins going even where the servers replicate as
    multi-provider, i.e. accept that two gateways may accept one code twice."""
    start_tls: bool = False
    ca_file: Path | None = None
    timeout: float = 5.0
    search_attribute: str = "uid"
    user_filter: str = "(objectClass=inetOrgPerson)"
    upn_attribute: str = "userPrincipalName"
    """Attribute that holds user@realm names (AD: userPrincipalName; OpenLDAP: mail)."""
    domains: tuple[str, ...] = ()
    inventory_dn: str | None = None
    state_dn: str | None = None
    """Where OTP state lives: None keeps it in the user's own entry; a DN keeps it in one entry
    per user (cn=<entry UUID>) below that container, which only the service account writes."""
    state_classes: tuple[str, ...] = ("top", "organizationalRole")
    allow_self_writable_state: bool = False
    """Without state_dn, accept the risk that users may write their own OTP state (and so
    replay spent codes): AD refuses to start without it, OpenLDAP refuses OTP logins unless
    its access rules prove that users cannot write it (``state_acl_guard.py``)."""
    cas_retries: int = 5
    state_cache_seconds: float = 10.0
    """Reuse a user's last-seen raw entry this long instead of searching (0: always search)."""


def cleartext_ldap_problem(url: str, start_tls: bool) -> str | None:
    """Why ``url`` must not carry passwords (plain ldap:// to another host), or None.

    The one rule of the gateway, the proxy's upstream connections and the CLI: plain
    ``ldap://`` without StartTLS only to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme != "ldap" or start_tls or is_loopback_host(parts.hostname or ""):
        return None
    return (
        f"{url!r} would send passwords in clear text: plain ldap:// is only for loopback "
        "hosts (127.0.0.0/8, ::1, localhost); use an ldaps:// URL or set "
        "[directory].start_tls = true"
    )


def _mapped(
    attrs: Section, formats: Section, role: str, default_name: str, server: str
) -> MappedAttribute:
    raw = attrs.raw(role)
    syntax: Syntax | None = None
    max_size: int | None = None
    if raw is None:
        name = default_name
    elif isinstance(raw, str):
        name = raw
    elif isinstance(raw, dict):
        table = Section(raw, f"{attrs.path}.{role}")
        name = table.require("name", str, "an attribute name")
        syn = table.get("syntax", str, "")
        if syn:
            try:
                syntax = Syntax(syn)
            except ValueError as exc:
                allowed = ", ".join(s.value for s in Syntax)
                raise ConfigError(
                    f"{table.key('syntax')}: {syn!r} is not one of {allowed}"
                ) from exc
        max_size = table.get("max_size", int, 0) or None
        table.done()
    else:
        raise ConfigError(f"{attrs.key(role)}: expected an attribute name or a table")
    known = KNOWN_ATTRIBUTES[server].get(name.lower())
    if syntax is None:
        if known is None:
            raise ConfigError(
                f"{attrs.key(role)}: {name!r} is not an attribute otpgate knows for {server}; "
                f'give it as {{ name = {name!r}, syntax = "octet|unicode|postal|directory", '
                "max_size = N }"
            )
        syntax = known.syntax
    if max_size is None and known is not None:
        max_size = known.max_size
    default_fmt = Format.JSON_ENCRYPTED.value
    if formats.get(role, str, default_fmt) == "json":
        raise ConfigError(f"{formats.key(role)}: {PLAIN_REFUSED}")
    fmt = Format(formats.choice(role, tuple(f.value for f in Format), default_fmt))
    spec = AttributeSpec(name, syntax, max_size)
    try:
        check_format(spec, fmt, ROLE_PURPOSE[role])
    except CodecError as exc:
        raise ConfigError(f"{formats.key(role)}: {exc}") from exc
    return MappedAttribute(spec, fmt)


def _urls(sec: Section, start_tls: bool, server: str) -> tuple[tuple[str, ...], str | None]:
    urls = sec.strings("urls")
    if not urls:
        raise ConfigError(f"{sec.key('urls')} is required: a list of ldap:// or ldaps:// URLs")
    urls = tuple(ldap_url(sec, "urls", u) for u in urls)
    write_url = sec.get("write_url", str, "") or None
    implicit = write_url is None and server == "ad"
    if implicit:
        # AD replicates every DC's writes to the others later: with OTP state on whichever
        # DC answers (a failover someone can force) one code could be accepted twice.  The
        # default is checked like the value it stands for.
        write_url = "discover"
    if write_url is not None and write_url != "discover":
        ldap_url(sec, "write_url", write_url)
    if start_tls and any(u.startswith("ldaps:") for u in urls):
        raise ConfigError(f"{sec.key('start_tls')}: StartTLS is for ldap:// URLs, not ldaps://")
    for u in urls:
        problem = cleartext_ldap_problem(u, start_tls)
        if problem:
            raise ConfigError(f"{sec.key('urls')}: {problem}")
    if write_url is not None and write_url != "discover":
        problem = cleartext_ldap_problem(write_url, start_tls)
        if problem:
            raise ConfigError(f"{sec.key('write_url')}: {problem}")
    if write_url == "discover" and not start_tls and not all(u.startswith("ldaps:") for u in urls):
        unset = " (unset on AD: the PDC emulator)" if implicit else ""
        raise ConfigError(
            f"{sec.key('write_url')}: 'discover'{unset} finds a remote DC, reached like the "
            "first URL: use ldaps:// URLs or set [directory].start_tls = true"
            + ("; or set write_url to the one DC that holds OTP state" if implicit else "")
        )
    return urls, write_url


def _state_dn(sec: Section, profile: Profile, inventory_dn: str | None) -> str | None:
    state_dn = sec.get("state_dn", str, "") or None
    allow_self_writable = sec.value(DirectoryConfig, "allow_self_writable_state", bool)
    if state_dn is None and profile.server == "ad" and not allow_self_writable:
        raise ConfigError(
            f"{sec.key('state_dn')} is required on Active Directory: by default every AD user "
            "may write their own postalAddress, registeredAddress and wWWHomePage, so whoever "
            "has a user's password could roll the use state back and replay spent codes. Give "
            'an OU that only the service account can write (e.g. "OU=otpgate state,DC=example,'
            'DC=org", see schema/ad/README.md); or, only where schema/ad/apply-acl.sh removed '
            "that right from every user (run again for each new user), set "
            "allow_self_writable_state = true"
        )
    if state_dn is not None and state_dn.lower() == (inventory_dn or "").lower():
        raise ConfigError(f"{sec.key('state_dn')}: must not be the inventory_dn container")
    return state_dn


def _check_period(value: float) -> None:
    if not 0 < value <= 3600:
        raise ValueError(f"must be above 0 and at most 3600 seconds, not {value}")


def parse_directory(sec: Section, base: Path) -> DirectoryConfig:
    profile = PROFILES[sec.choice("profile", tuple(PROFILES), "ad")]
    start_tls = sec.value(DirectoryConfig, "start_tls", bool)
    urls, write_url = _urls(sec, start_tls, profile.server)
    if write_url == "discover" and profile.server != "ad":
        raise ConfigError(f"{sec.key('write_url')}: 'discover' (the PDC emulator) is for AD only")
    ca = sec.get("ca_file", str, "")
    ca_file = (base / ca) if ca else None
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"{sec.key('ca_file')}: {ca_file} is not a readable file")
    password = secret(sec, "bind_password", base)
    bind_dn = sec.require("bind_dn", str, "the service account's DN")
    if not password:
        raise ConfigError(
            f"{sec.key('bind_password')} (or bind_password_file) is required: "
            "otpgate never binds anonymously"
        )
    attrs = sec.sub("attributes")
    formats = sec.sub("formats")
    mapped = {
        role: _mapped(attrs, formats, role, getattr(profile, role), profile.server)
        for role in ROLE_PURPOSE
    }
    attrs.done()
    formats.done()
    names = [m.spec.name.lower() for r, m in mapped.items() if r != "inventory"]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"[{attrs.path}]: seed, tokens and used must be three different attributes"
        )
    inventory_dn = sec.get("inventory_dn", str, "") or None
    state_classes = sec.strings("state_object_classes", profile.state_classes)
    if not state_classes:
        raise ConfigError(f"{sec.key('state_object_classes')}: give at least one object class")
    result = DirectoryConfig(
        urls=urls,
        base_dn=sec.require("base_dn", str, "the search base DN"),
        bind_dn=bind_dn,
        bind_password=password,
        profile=profile,
        seed=mapped["seed"],
        tokens=mapped["tokens"],
        used=mapped["used"],
        inventory=mapped["inventory"],
        write_url=write_url,
        pdc_check_seconds=sec.value(DirectoryConfig, "pdc_check_seconds", float, _check_period),
        start_tls=start_tls,
        ca_file=ca_file,
        timeout=sec.value(DirectoryConfig, "timeout", float, positive),
        search_attribute=sec.get("search_attribute", str, profile.search_attribute),
        user_filter=sec.get("user_filter", str, profile.user_filter),
        upn_attribute=sec.get("upn_attribute", str, profile.upn_attribute),
        domains=tuple(d.upper() for d in sec.strings("domains")),
        inventory_dn=inventory_dn,
        state_dn=_state_dn(sec, profile, inventory_dn),
        state_classes=state_classes,
        allow_self_writable_state=sec.value(DirectoryConfig, "allow_self_writable_state", bool),
        allow_unpinned_multi_provider=sec.value(
            DirectoryConfig, "allow_unpinned_multi_provider", bool
        ),
        cas_retries=sec.value(DirectoryConfig, "cas_retries", int, in_range(1, 50)),
        state_cache_seconds=sec.value(DirectoryConfig, "state_cache_seconds", float, non_negative),
    )
    sec.done()
    return result
