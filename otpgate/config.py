"""Configuration: one TOML file loaded into typed, validated, immutable objects.

Every error is a :class:`ConfigError` whose message names the key (as
``[section].key``) and says what is allowed; nothing else is raised for a bad
file.  No global state: ``load_config(path)`` returns a :class:`Config`.
"""

from __future__ import annotations

import datetime
import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from otpgate.codec import (
    PLAIN_REFUSED,
    AttributeSpec,
    CodecError,
    Format,
    Purpose,
    Syntax,
    check_format,
)
from otpgate.errors import ConfigError as ConfigError
from otpgate.otp.oath import (
    DEFAULT_HOTP_LOOK_AHEAD,
    DEFAULT_PERIOD,
    DEFAULT_TOTP_WINDOW,
    Algorithm,
    check_digits,
    check_look_ahead,
    check_period,
    check_totp_window,
)

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- directory profiles ----------------------------------------------------------

# Known attributes: syntax and the largest value the directory accepts.
KNOWN_ATTRIBUTES: dict[str, dict[str, AttributeSpec]] = {
    "ad": {
        "postaladdress": AttributeSpec("postalAddress", Syntax.UNICODE, 4096),
        "registeredaddress": AttributeSpec("registeredAddress", Syntax.OCTET, 4096),
        "wwwhomepage": AttributeSpec("wWWHomePage", Syntax.UNICODE, 2048),
    },
    "openldap": {
        "postaladdress": AttributeSpec("postalAddress", Syntax.POSTAL, None),
        "registeredaddress": AttributeSpec("registeredAddress", Syntax.POSTAL, None),
        "homepostaladdress": AttributeSpec("homePostalAddress", Syntax.POSTAL, None),
        "otpgateseed": AttributeSpec("otpgateSeed", Syntax.OCTET, None),
        "otpgatetoken": AttributeSpec("otpgateToken", Syntax.OCTET, None),
        "otpgateused": AttributeSpec("otpgateUsed", Syntax.OCTET, None),
        "otpgateinventorytoken": AttributeSpec("otpgateInventoryToken", Syntax.OCTET, None),
    },
}


@dataclass(frozen=True)
class Profile:
    name: str
    server: str  # "ad" | "openldap"
    seed: str
    tokens: str
    used: str
    inventory: str
    id_attribute: str
    search_attribute: str
    user_filter: str
    upn_attribute: str
    aux_class: str = ""
    """Object class a user entry needs before the attributes can be written ("" for none)."""
    inventory_classes: tuple[str, ...] = ("top", "organizationalRole")
    """Object classes of an inventory entry (cn=SERIAL under inventory_dn)."""
    state_classes: tuple[str, ...] = ("top", "organizationalRole")
    """Object classes of a state entry (cn=USER-UUID under state_dn): they must allow the
    seed, tokens and used attributes."""


PROFILES = {
    "ad": Profile(
        "ad",
        "ad",
        "postalAddress",
        "registeredAddress",
        "wWWHomePage",
        "postalAddress",
        "objectGUID",
        "sAMAccountName",
        "(&(objectCategory=person)(objectClass=user))",
        "userPrincipalName",
    ),
    "openldap": Profile(
        "openldap",
        "openldap",
        "postalAddress",
        "registeredAddress",
        "homePostalAddress",
        "postalAddress",
        "entryUUID",
        "uid",
        "(objectClass=inetOrgPerson)",
        "mail",
        # organizationalRole has postalAddress and registeredAddress, not homePostalAddress.
        state_classes=("top", "organizationalRole", "extensibleObject"),
    ),
    "openldap-schema": Profile(
        "openldap-schema",
        "openldap",
        "otpgateSeed",
        "otpgateToken",
        "otpgateUsed",
        "otpgateInventoryToken",
        "entryUUID",
        "uid",
        "(objectClass=inetOrgPerson)",
        "mail",
        aux_class="otpgateUser",
        inventory_classes=("top", "device", "otpgateInventory"),
        state_classes=("top", "organizationalRole", "otpgateUser"),
    ),
}


# -- the typed config ---------------------------------------------------------------


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
    """Pinned server for OTP state ("discover": AD PDC emulator); None: the URLs in order."""
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
    """AD without state_dn: the admin asserts that users cannot write their own state."""
    cas_retries: int = 5
    state_cache_seconds: float = 10.0
    """Reuse a user's last-seen raw entry this long instead of searching (0: always search)."""


@dataclass(frozen=True)
class OtpConfig:
    totp_window: int = DEFAULT_TOTP_WINDOW
    hotp_look_ahead: int = DEFAULT_HOTP_LOOK_AHEAD
    digits: int = 6
    algorithm: Algorithm = Algorithm.SHA1
    period: int = DEFAULT_PERIOD
    issuer: str = "otpgate"
    scratch_low_threshold: int = 10
    max_tokens_per_user: int = 5


@dataclass(frozen=True)
class LockoutConfig:
    max_failures: int = 5
    duration_minutes: int = 15


@dataclass(frozen=True)
class PolicyConfig:
    exempt_dns: tuple[str, ...] = ()
    exempt_subtrees: tuple[str, ...] = ()
    require_otp_groups: tuple[str, ...] = ()
    """Empty: every non-exempt user needs an OTP."""
    trusted_networks: tuple[Network, ...] = ()
    admin_groups: tuple[str, ...] = ()
    admins_always_need_otp: bool = True
    allow_sasl_for_exempt: bool = False
    """Forward SASL binds named as an exempt account; the bound identity is then confirmed
    with Who Am I? (RFC 4532) and anything else is refused (docs/SECURITY.md)."""


@dataclass(frozen=True)
class LdapProxyConfig:
    listen: tuple[str, ...] = ()
    """Twisted endpoint strings, e.g. "tcp:389:interface=0.0.0.0" or "ssl:636:..."."""
    cert_file: Path | None = None
    key_file: Path | None = None
    min_tls_version: str = "1.2"
    max_pdu_before_bind: int = 256 * 1024
    max_pdu_after_bind: int = 16 * 1024 * 1024
    max_connections: int = 1000
    max_connections_per_client: int = 100
    idle_timeout: float = 300.0
    bind_cache_seconds: float = 0.0
    otp_delimiter: str = ""
    processes: int = 1
    """Reactor processes serving the listeners (SO_REUSEPORT); more use more cores."""
    require_tls_for_binds: bool = False
    """Binds carrying credentials need TLS (LDAPS or StartTLS) first, else
    confidentialityRequired (13).  The parser makes it true whenever a certificate is set."""
    max_queued_requests: int = 100
    """Requests held while the upstream connects or a bind runs; one more closes the
    connection (so does the byte cap, 1 MiB)."""


@dataclass(frozen=True)
class RadiusClient:
    network: Network
    secret: bytes = field(repr=False)
    mode: str = "append"
    name: str = ""
    allow_chap: bool = False
    allow_mschapv2: bool = False
    require_message_authenticator: bool = True


@dataclass(frozen=True)
class RadiusConfig:
    listen: tuple[str, ...] = ()
    """"host:port" pairs for the authentication socket."""
    clients: tuple[RadiusClient, ...] = ()
    reject_delay: float = 0.0
    challenge_timeout: float = 120.0
    rate_limit_per_client: float = 0.0
    max_attributes: int = 255
    challenge_message: str = "Enter your one-time code"
    """Reply-Message of the Access-Challenge (challenge mode)."""
    max_challenges: int = 10000
    """Pending challenge States kept; beyond it the oldest is forgotten."""
    duplicate_cache_seconds: float = 30.0
    """How long a reply is kept to answer a retransmission of its request (RFC 5080)."""
    duplicate_cache_size: int = 100000
    rate_limit_burst: float = 0.0
    """Requests a NAS may send at once above rate_limit_per_client (0: the rate, at least 1)."""
    status_server: bool = True
    """Answer Status-Server (RFC 5997) on the authentication port."""
    unavailable_reply: str = "none"
    """When the directory cannot be asked: "none" (no reply: the NAS fails over) or "reject"."""
    bind_connections: int = 8
    """Directory connections reused for users' password binds (0: a new one per bind)."""


@dataclass(frozen=True)
class LoggingConfig:
    json: bool = False
    file: Path | None = None
    flush_seconds: float = 1.0
    """Audit events are written to ``file`` at least this often (0: every event at once)."""


@dataclass(frozen=True)
class WebConfig:
    """The web portal: self-service enrollment, help desk and /metrics."""

    listen: tuple[str, ...] = ()
    """ "ssl:PORT[:interface=ADDR]" (HTTPS, cert_file/key_file) or "tcp:PORT:interface=LOOPBACK"."""
    cert_file: Path | None = None
    key_file: Path | None = None
    helpdesk_groups: tuple[str, ...] = ()
    """DNs of the directory groups whose members may use the help desk."""
    password_only_enrollment_networks: tuple[Network, ...] = ()
    """Users without any token may sign in with the password alone from these (first enrollment)."""
    password_only_enrollment_until: float | None = None
    """Unix time: before it, users without any token may do so from anywhere (a rollout window)."""
    metrics_networks: tuple[Network, ...] = ()
    """Who may read /metrics (empty: nobody)."""
    session_idle_seconds: float = 900.0
    session_max_seconds: float = 8 * 3600.0
    sign_in_attempts_per_minute: int = 10
    """Per client address, per typed user name and per directory entry."""
    max_sessions: int = 10000
    trusted_proxies: tuple[Network, ...] = ()
    """Reverse proxies whose forwarding header (``forwarded_header``) names the client."""
    forwarded_header: str = "x-forwarded-for"
    """"x-forwarded-for" or "forwarded" (RFC 7239): the one header the proxies append to."""
    tls_terminated_by_proxy: bool = False
    """Browsers reach the portal over HTTPS at the proxy: Secure __Host- cookie and HSTS even
    on a plain loopback listener."""


@dataclass(frozen=True)
class Config:
    directory: DirectoryConfig
    keyring: Path
    otp: OtpConfig = OtpConfig()
    lockout: LockoutConfig = LockoutConfig()
    policy: PolicyConfig = PolicyConfig()
    ldap_proxy: LdapProxyConfig = LdapProxyConfig()
    radius: RadiusConfig = RadiusConfig()
    logging: LoggingConfig = LoggingConfig()
    web: WebConfig = WebConfig()


# -- reading ---------------------------------------------------------------------------


class _Section:
    """One TOML table being read: tracks its path and which keys were used."""

    def __init__(self, doc: Mapping[str, Any], path: str) -> None:
        self.doc = doc
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        if not self.path:
            return name
        if "[" in self.path:  # an element of an array of tables: radius.clients[0].secret
            return f"{self.path}.{name}"
        return f"[{self.path}].{name}"

    def _raw(self, name: str) -> Any:
        self.seen.add(name)
        return self.doc.get(name)

    def get(self, name: str, kind: type[T], default: T, what: str = "") -> T:
        value = self._raw(name)
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.key(name)}: expected {what or kind.__name__}, got {value!r}")
        return value

    def require(self, name: str, kind: type[T], what: str = "") -> T:
        if self._raw(name) is None:
            raise ConfigError(f"{self.key(name)} is required ({what or kind.__name__})")
        value: T = self.doc[name]
        return self.get(name, kind, value, what)

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings")
        return tuple(value)

    def check(self, name: str, value: T, checker: Callable[[T], object]) -> T:
        try:
            checker(value)
        except ValueError as exc:
            raise ConfigError(f"{self.key(name)}: {exc}") from exc
        return value

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in allowed:
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {', '.join(allowed)}")
        return value

    def sub(self, name: str) -> _Section:
        value = self._raw(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.key(name)}: expected a table")
        return _Section(value, f"{self.path}.{name}" if self.path else name)

    def done(self) -> None:
        unknown = sorted(set(self.doc) - self.seen)
        if unknown:
            allowed = ", ".join(sorted(self.seen))
            raise ConfigError(f"{self.key(unknown[0])}: unknown key (allowed here: {allowed})")


def _positive(value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be above 0, not {value}")


def _non_negative(value: float) -> None:
    if value < 0:
        raise ValueError(f"must be 0 or more, not {value}")


def _instant(sec: _Section, name: str) -> float | None:
    """An RFC 3339 date-time with its offset (TOML's own, or a string), as Unix time."""
    value = sec.get(name, object, None)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime.datetime) or value.tzinfo is None:
        raise ConfigError(
            f"{sec.key(name)}: expected a date-time with a time zone, "
            "e.g. 2027-01-31T00:00:00Z"
        )
    return value.timestamp()


def _network(sec: _Section, name: str, text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{sec.key(name)}: {text!r} is not an IP network in CIDR form") from exc


def _secret(sec: _Section, name: str, base: Path) -> str | None:
    """A secret given inline as NAME or read from NAME_file."""
    inline = sec.get(name, str, "")
    file_name = sec.get(name + "_file", str, "")
    if inline and file_name:
        raise ConfigError(f"{sec.key(name)}: give {name} or {name}_file, not both")
    if file_name:
        path = base / file_name
        try:
            return path.read_text("utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"{sec.key(name + '_file')}: cannot read {path}: {exc.strerror}"
            ) from exc
    return inline or None


def _ldap_url(sec: _Section, name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise ConfigError(f"{sec.key(name)}: {url!r} is not an ldap:// or ldaps:// URL with a host")
    return url


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost": a connection that never leaves this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    attrs: _Section, formats: _Section, role: str, default_name: str, server: str
) -> MappedAttribute:
    raw = attrs._raw(role)
    syntax: Syntax | None = None
    max_size: int | None = None
    if raw is None:
        name = default_name
    elif isinstance(raw, str):
        name = raw
    elif isinstance(raw, dict):
        table = _Section(raw, f"{attrs.path}.{role}")
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
    default_fmt = "json-encrypted"
    if formats.get(role, str, default_fmt) == "json":
        raise ConfigError(f"{formats.key(role)}: {PLAIN_REFUSED}")
    fmt_name = formats.choice(role, tuple(f.value for f in Format), default_fmt)
    fmt = Format(fmt_name)
    spec = AttributeSpec(name, syntax, max_size)
    try:
        check_format(spec, fmt, ROLE_PURPOSE[role])
    except CodecError as exc:
        raise ConfigError(f"{formats.key(role)}: {exc}") from exc
    return MappedAttribute(spec, fmt)


def _directory(sec: _Section, base: Path) -> DirectoryConfig:
    profile_name = sec.choice("profile", tuple(PROFILES), "ad")
    profile = PROFILES[profile_name]
    urls = sec.strings("urls")
    if not urls:
        raise ConfigError(f"{sec.key('urls')} is required: a list of ldap:// or ldaps:// URLs")
    urls = tuple(_ldap_url(sec, "urls", u) for u in urls)
    write_url = sec.get("write_url", str, "") or None
    if write_url is not None and write_url != "discover":
        _ldap_url(sec, "write_url", write_url)
    if write_url == "discover" and profile.server != "ad":
        raise ConfigError(f"{sec.key('write_url')}: 'discover' (the PDC emulator) is for AD only")
    start_tls = sec.get("start_tls", bool, False)
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
        raise ConfigError(
            f"{sec.key('write_url')}: 'discover' finds a remote DC, reached like the first URL: "
            "use ldaps:// URLs or set [directory].start_tls = true"
        )
    ca = sec.get("ca_file", str, "")
    ca_file = (base / ca) if ca else None
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"{sec.key('ca_file')}: {ca_file} is not a readable file")
    password = _secret(sec, "bind_password", base)
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
        for role in ("seed", "tokens", "used", "inventory")
    }
    attrs.done()
    formats.done()
    names = [m.spec.name.lower() for r, m in mapped.items() if r != "inventory"]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"[{attrs.path}]: seed, tokens and used must be three different attributes"
        )
    state_dn = sec.get("state_dn", str, "") or None
    inventory_dn = sec.get("inventory_dn", str, "") or None
    allow_self_writable = sec.get("allow_self_writable_state", bool, False)
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
    state_classes = sec.strings("state_object_classes", profile.state_classes)
    if not state_classes:
        raise ConfigError(f"{sec.key('state_object_classes')}: give at least one object class")
    timeout = sec.check("timeout", sec.get("timeout", float, 5.0), _positive)
    retries = sec.get("cas_retries", int, 5)
    if not 1 <= retries <= 50:
        raise ConfigError(f"{sec.key('cas_retries')}: must be 1 to 50, not {retries}")
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
        start_tls=start_tls,
        ca_file=ca_file,
        timeout=timeout,
        search_attribute=sec.get("search_attribute", str, profile.search_attribute),
        user_filter=sec.get("user_filter", str, profile.user_filter),
        upn_attribute=sec.get("upn_attribute", str, profile.upn_attribute),
        domains=tuple(d.upper() for d in sec.strings("domains")),
        inventory_dn=inventory_dn,
        state_dn=state_dn,
        state_classes=state_classes,
        allow_self_writable_state=allow_self_writable,
        cas_retries=retries,
        state_cache_seconds=sec.check(
            "state_cache_seconds", sec.get("state_cache_seconds", float, 10.0), _non_negative
        ),
    )
    sec.done()
    return result


def _otp(sec: _Section) -> OtpConfig:
    alg = sec.choice("algorithm", tuple(a.value for a in Algorithm), "sha1")
    result = OtpConfig(
        totp_window=sec.check("totp_window", sec.get("totp_window", int, 1), check_totp_window),
        hotp_look_ahead=sec.check(
            "hotp_look_ahead", sec.get("hotp_look_ahead", int, 10), check_look_ahead
        ),
        digits=sec.check("digits", sec.get("digits", int, 6), check_digits),
        algorithm=Algorithm(alg),
        period=sec.check("period", sec.get("period", int, 30), check_period),
        issuer=sec.get("issuer", str, "otpgate"),
        scratch_low_threshold=sec.check(
            "scratch_low_threshold", sec.get("scratch_low_threshold", int, 10), _non_negative
        ),
        max_tokens_per_user=sec.check(
            "max_tokens_per_user", sec.get("max_tokens_per_user", int, 5), _positive
        ),
    )
    sec.done()
    return result


def _lockout(sec: _Section) -> LockoutConfig:
    result = LockoutConfig(
        max_failures=sec.check("max_failures", sec.get("max_failures", int, 5), _positive),
        duration_minutes=sec.check(
            "duration_minutes", sec.get("duration_minutes", int, 15), _positive
        ),
    )
    sec.done()
    return result


def _policy(sec: _Section) -> PolicyConfig:
    result = PolicyConfig(
        exempt_dns=sec.strings("exempt_dns"),
        exempt_subtrees=sec.strings("exempt_subtrees"),
        require_otp_groups=sec.strings("require_otp_groups"),
        trusted_networks=tuple(
            _network(sec, "trusted_networks", n) for n in sec.strings("trusted_networks")
        ),
        admin_groups=sec.strings("admin_groups"),
        admins_always_need_otp=sec.get("admins_always_need_otp", bool, True),
        allow_sasl_for_exempt=sec.get("allow_sasl_for_exempt", bool, False),
    )
    sec.done()
    return result


def _ldap_proxy(sec: _Section, base: Path) -> LdapProxyConfig:
    cert = sec.get("cert_file", str, "")
    key = sec.get("key_file", str, "")
    listen = sec.strings("listen")
    if any(e.startswith("ssl:") for e in listen) and not (cert and key):
        raise ConfigError(f"{sec.key('listen')}: an ssl: listener needs cert_file and key_file")
    delim = sec.get("otp_delimiter", str, "")
    if len(delim) > 1:
        raise ConfigError(f"{sec.key('otp_delimiter')}: one character or empty, not {delim!r}")
    require_tls = _require_tls_for_binds(sec, listen, bool(cert and key))
    result = LdapProxyConfig(
        listen=listen,
        cert_file=base / cert if cert else None,
        key_file=base / key if key else None,
        min_tls_version=sec.choice("min_tls_version", ("1.2", "1.3"), "1.2"),
        max_pdu_before_bind=sec.check(
            "max_pdu_before_bind", sec.get("max_pdu_before_bind", int, 256 * 1024), _positive
        ),
        max_pdu_after_bind=sec.check(
            "max_pdu_after_bind", sec.get("max_pdu_after_bind", int, 16 * 1024 * 1024), _positive
        ),
        max_connections=sec.check(
            "max_connections", sec.get("max_connections", int, 1000), _positive
        ),
        max_connections_per_client=sec.check(
            "max_connections_per_client", sec.get("max_connections_per_client", int, 100), _positive
        ),
        idle_timeout=sec.check("idle_timeout", sec.get("idle_timeout", float, 300.0), _positive),
        bind_cache_seconds=sec.check(
            "bind_cache_seconds", sec.get("bind_cache_seconds", float, 0.0), _non_negative
        ),
        otp_delimiter=delim,
        processes=_processes(sec, listen),
        require_tls_for_binds=require_tls,
        max_queued_requests=sec.check(
            "max_queued_requests", sec.get("max_queued_requests", int, 100), _positive
        ),
    )
    sec.done()
    return result


def _require_tls_for_binds(sec: _Section, listen: tuple[str, ...], has_cert: bool) -> bool:
    """Default: true with a certificate.  Without one, binds travel in clear text, which is
    only allowed on loopback listeners unless the operator says so explicitly."""
    given = sec._raw("require_tls_for_binds") is not None
    explicit = sec.get("require_tls_for_binds", bool, False)
    if not given:
        if has_cert:
            return True
        for description in listen:
            if description.startswith("ssl:"):
                continue
            try:
                address = parse_listen(description)
                local = is_loopback_host(address.interface)
            except ValueError:
                local = False
            if not local:
                raise ConfigError(
                    f"{sec.key('listen')}: {description!r} would take passwords in clear "
                    "text from the network: set cert_file and key_file (binds then need "
                    "StartTLS or LDAPS), listen on a loopback interface, or set "
                    "require_tls_for_binds = false if something else protects the path"
                )
        return False
    if explicit and not has_cert:
        raise ConfigError(
            f"{sec.key('require_tls_for_binds')}: needs cert_file and key_file "
            "(StartTLS/LDAPS to offer)"
        )
    return explicit


def _processes(sec: _Section, listen: tuple[str, ...]) -> int:
    processes = sec.get("processes", int, 1)
    if not 1 <= processes <= 64:
        raise ConfigError(f"{sec.key('processes')}: must be 1 to 64, not {processes}")
    if processes > 1:
        for description in listen:
            try:
                parse_listen(description)
            except ValueError as exc:
                raise ConfigError(f"{sec.key('listen')}: with processes > 1, {exc}") from exc
    return processes


@dataclass(frozen=True)
class ListenAddress:
    tls: bool
    port: int
    interface: str


def parse_listen(description: str) -> ListenAddress:
    """The simple "tcp:PORT[:interface=ADDR]" / "ssl:PORT[:interface=ADDR]" forms."""
    kind, _, rest = description.partition(":")
    parts = rest.split(":")
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind not in ("tcp", "ssl") or not parts[0].isdigit() or set(options) - {"interface"}:
        raise ValueError(
            f"{description!r}: use tcp:PORT[:interface=ADDR] or ssl:PORT[:interface=ADDR]"
        )
    # All interfaces unless told otherwise: what Twisted's tcp:/ssl: endpoints do too.
    everywhere = "0.0.0.0"  # noqa: S104
    return ListenAddress(kind == "ssl", int(parts[0]), options.get("interface", everywhere))


ROLE_PURPOSE = {
    "seed": Purpose.SEED,
    "tokens": Purpose.TOKEN,
    "used": Purpose.USED,
    "inventory": Purpose.INVENTORY,
}

RADIUS_MODES = ("append", "challenge", "otp-only")
RADIUS_UNAVAILABLE_REPLIES = ("none", "reject")


def parse_radius_listen(spec: str) -> tuple[str, int]:
    """A RADIUS listen address "host:port" (IPv6 as "[::]:1812") as (host, port)."""
    host, sep, port_text = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{spec!r} is not host:port (IPv6 as [address]:port)")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"{spec!r}: {host!r} is not an IP address") from exc
    return host, int(port_text)


def _radius(sec: _Section, base: Path) -> RadiusConfig:
    clients_raw = sec._raw("clients") or []
    if not isinstance(clients_raw, list):
        raise ConfigError(f"{sec.key('clients')}: expected [[radius.clients]] tables")
    clients = []
    for i, raw in enumerate(clients_raw):
        if not isinstance(raw, dict):
            raise ConfigError(f"{sec.key('clients')}[{i}]: expected a table")
        csec = _Section(raw, f"{sec.path}.clients[{i}]")
        secret = _secret(csec, "secret", base)
        if not secret:
            raise ConfigError(f"{csec.key('secret')} (or secret_file) is required")
        if len(secret) < 16:
            raise ConfigError(
                f"{csec.key('secret')}: use a shared secret of at least 16 characters"
            )
        clients.append(
            RadiusClient(
                network=_network(csec, "address", csec.require("address", str, "an IP or CIDR")),
                secret=secret.encode(),
                mode=csec.choice("mode", RADIUS_MODES, "append"),
                name=csec.get("name", str, ""),
                allow_chap=csec.get("allow_chap", bool, False),
                allow_mschapv2=csec.get("allow_mschapv2", bool, False),
                require_message_authenticator=csec.get("require_message_authenticator", bool, True),
            )
        )
        csec.done()
        for j, other in enumerate(clients[:-1]):
            if other.network == clients[-1].network:
                raise ConfigError(f"{csec.key('address')}: {other.network} is already clients[{j}]")
    listen = sec.strings("listen")
    for spec in listen:
        sec.check("listen", spec, parse_radius_listen)
    result = RadiusConfig(
        listen=listen,
        clients=tuple(clients),
        reject_delay=sec.check("reject_delay", sec.get("reject_delay", float, 0.0), _non_negative),
        challenge_timeout=sec.check(
            "challenge_timeout", sec.get("challenge_timeout", float, 120.0), _positive
        ),
        rate_limit_per_client=sec.check(
            "rate_limit_per_client", sec.get("rate_limit_per_client", float, 0.0), _non_negative
        ),
        max_attributes=sec.check("max_attributes", sec.get("max_attributes", int, 255), _positive),
        challenge_message=sec.get("challenge_message", str, "Enter your one-time code"),
        max_challenges=sec.check(
            "max_challenges", sec.get("max_challenges", int, 10000), _positive
        ),
        duplicate_cache_seconds=sec.check(
            "duplicate_cache_seconds", sec.get("duplicate_cache_seconds", float, 30.0), _positive
        ),
        duplicate_cache_size=sec.check(
            "duplicate_cache_size", sec.get("duplicate_cache_size", int, 100000), _positive
        ),
        rate_limit_burst=sec.check(
            "rate_limit_burst", sec.get("rate_limit_burst", float, 0.0), _non_negative
        ),
        status_server=sec.get("status_server", bool, True),
        unavailable_reply=sec.choice("unavailable_reply", RADIUS_UNAVAILABLE_REPLIES, "none"),
        bind_connections=sec.check(
            "bind_connections", sec.get("bind_connections", int, 8), _non_negative
        ),
    )
    if not 1 <= len(result.challenge_message.encode()) <= 253:
        raise ConfigError(f"{sec.key('challenge_message')}: must be 1 to 253 octets of UTF-8")
    if result.max_attributes > 2038:
        raise ConfigError(
            f"{sec.key('max_attributes')}: a 4096-octet packet holds at most 2038 attributes"
        )
    sec.done()
    return result


_LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
WEB_FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")


def _web_listen(sec: _Section, description: str, has_tls: bool) -> str:
    try:
        address = parse_listen(description)
    except ValueError as exc:
        raise ConfigError(f"{sec.key('listen')}: {exc}") from exc
    if address.tls and not has_tls:
        raise ConfigError(f"{sec.key('listen')}: an ssl: listener needs cert_file and key_file")
    if not address.tls:
        loopback = address.interface in _LOOPBACK_NAMES
        if not loopback:
            try:
                loopback = ipaddress.ip_address(address.interface).is_loopback
            except ValueError:
                loopback = False
        if not loopback:
            raise ConfigError(
                f"{sec.key('listen')}: {description!r}: plain HTTP only on loopback "
                "(tcp:PORT:interface=127.0.0.1); use ssl:PORT with cert_file/key_file"
            )
    return description


def _web(sec: _Section, base: Path) -> WebConfig:
    cert = sec.get("cert_file", str, "")
    key = sec.get("key_file", str, "")
    if bool(cert) != bool(key):
        raise ConfigError(f"{sec.key('cert_file')}: give both cert_file and key_file, or neither")
    listen = tuple(_web_listen(sec, d, bool(cert)) for d in sec.strings("listen"))
    result = WebConfig(
        listen=listen,
        cert_file=base / cert if cert else None,
        key_file=base / key if key else None,
        helpdesk_groups=tuple(g.lower() for g in sec.strings("helpdesk_groups")),
        password_only_enrollment_networks=tuple(
            _network(sec, "password_only_enrollment_networks", n)
            for n in sec.strings("password_only_enrollment_networks")
        ),
        password_only_enrollment_until=_instant(sec, "password_only_enrollment_until"),
        metrics_networks=tuple(
            _network(sec, "metrics_networks", n) for n in sec.strings("metrics_networks")
        ),
        session_idle_seconds=sec.check(
            "session_idle_seconds", sec.get("session_idle_seconds", float, 900.0), _positive
        ),
        session_max_seconds=sec.check(
            "session_max_seconds", sec.get("session_max_seconds", float, 8 * 3600.0), _positive
        ),
        sign_in_attempts_per_minute=sec.check(
            "sign_in_attempts_per_minute",
            sec.get("sign_in_attempts_per_minute", int, 10),
            _positive,
        ),
        max_sessions=sec.check("max_sessions", sec.get("max_sessions", int, 10000), _positive),
        trusted_proxies=tuple(
            _network(sec, "trusted_proxies", n) for n in sec.strings("trusted_proxies")
        ),
        forwarded_header=sec.get("forwarded_header", str, "x-forwarded-for").lower(),
        tls_terminated_by_proxy=sec.get("tls_terminated_by_proxy", bool, False),
    )
    if result.forwarded_header not in WEB_FORWARDED_HEADERS:
        raise ConfigError(
            f"{sec.key('forwarded_header')}: {result.forwarded_header!r} is not one of "
            f"{', '.join(WEB_FORWARDED_HEADERS)}"
        )
    if result.tls_terminated_by_proxy and not result.trusted_proxies:
        raise ConfigError(
            f"{sec.key('tls_terminated_by_proxy')}: behind a proxy, list it in trusted_proxies "
            "too (otherwise every client is the proxy's address: one shared rate limit, and "
            "metrics_networks or password_only_enrollment_networks that hold it open to all)"
        )
    if result.session_idle_seconds > result.session_max_seconds:
        raise ConfigError(
            f"{sec.key('session_idle_seconds')}: must not be above session_max_seconds"
        )
    sec.done()
    return result


def parse_config(doc: Mapping[str, Any], base: Path) -> Config:
    """Build a Config from a parsed TOML document; relative paths are relative to ``base``."""
    top = _Section(doc, "")
    directory = _directory(top.sub("directory"), base)
    vault = top.sub("vault")
    keyring = base / vault.require("keyring", str, "the path of the keyring file (otpgate keygen)")
    vault.done()
    log = top.sub("logging")
    log_file = log.get("file", str, "")
    logging = LoggingConfig(
        json=log.get("json", bool, False),
        file=base / log_file if log_file else None,
        flush_seconds=log.check(
            "flush_seconds", log.get("flush_seconds", float, 1.0), _non_negative
        ),
    )
    log.done()
    config = Config(
        directory=directory,
        keyring=keyring,
        otp=_otp(top.sub("otp")),
        lockout=_lockout(top.sub("lockout")),
        policy=_policy(top.sub("policy")),
        ldap_proxy=_ldap_proxy(top.sub("ldap_proxy"), base),
        radius=_radius(top.sub("radius"), base),
        logging=logging,
        web=_web(top.sub("web"), base),
    )
    top.done()
    return config


def load_config(path: Path) -> Config:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_config(doc, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
