"""Reading one TOML config file: the table reader and the checks every section shares.

Each section of the file is parsed beside the code it configures (``directory/config.py``,
``auth/config.py``, ``ldapproxy/config.py``, ``radius/config.py``, ``web/config.py``);
``otpgate.config`` puts them together.  A default is stated once, in the section's
dataclass: ``Section.value`` reads it from there.  Every error is a ``ConfigError`` whose
message names the key (``[section].key``) and what is allowed.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from otpgate.errors import ConfigError

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(text: str, zone: bool = False) -> Address | None:
    """A client's address given as text (None: it is none); an IPv4-mapped IPv6 address
    is its IPv4 address (a dual-stack socket's IPv4 peer).  ``zone``: a ``%zone`` suffix is
    dropped; without it such a text is no address."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0] if zone else text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: str | None, networks: Iterable[Network], zone: bool = False) -> bool:
    """Whether ``address`` (an IP address as text, as ``client_address`` reads it) lies in
    one of ``networks``."""
    addr = client_address(address, zone) if address is not None else None
    return addr is not None and any(addr in net for net in networks)


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls`` (where each default is stated)."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name}")


class Section:
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

    def raw(self, name: str) -> Any:
        self.seen.add(name)
        return self.doc.get(name)

    def given(self, name: str) -> bool:
        """Whether the file sets ``name`` (marks it as known)."""
        return self.raw(name) is not None

    def get(self, name: str, kind: type[T], default: T, what: str = "") -> T:
        value = self.raw(name)
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.key(name)}: expected {what or kind.__name__}, got {value!r}")
        return value

    def value(
        self, cls: type, name: str, kind: type[T], *checks: Callable[[T], object], what: str = ""
    ) -> T:
        """``name`` as ``kind``, defaulting to ``cls``'s field default, then checked."""
        value: T = self.get(name, kind, default_of(cls, name), what)
        for checker in checks:
            self.check(name, value, checker)
        return value

    def require(self, name: str, kind: type[T], what: str = "") -> T:
        if self.raw(name) is None:
            raise ConfigError(f"{self.key(name)} is required ({what or kind.__name__})")
        value: T = self.doc[name]
        return self.get(name, kind, value, what)

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings")
        return tuple(value)

    def networks(self, name: str) -> tuple[Network, ...]:
        return tuple(network(self, name, n) for n in self.strings(name))

    def dns(self, name: str) -> tuple[str, ...]:
        """A list of DNs (groups), each checked to be one (RFC 4514)."""
        from otpgate.dn import dn_key

        values = self.strings(name)
        for value in values:
            if not value or dn_key(value) is None:
                raise ConfigError(f"{self.key(name)}: {value!r} is not a DN")
        return values

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

    def sub(self, name: str) -> Section:
        value = self.raw(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.key(name)}: expected a table")
        return Section(value, f"{self.path}.{name}" if self.path else name)

    def done(self) -> None:
        unknown = sorted(set(self.doc) - self.seen)
        if unknown:
            allowed = ", ".join(sorted(self.seen))
            raise ConfigError(f"{self.key(unknown[0])}: unknown key (allowed here: {allowed})")


# -- checks shared by the sections -----------------------------------------------------------


def positive(value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be above 0, not {value}")


def non_negative(value: float) -> None:
    if value < 0:
        raise ValueError(f"must be 0 or more, not {value}")


def in_range(low: int, high: int) -> Callable[[int], None]:
    def check(value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be {low} to {high}, not {value}")

    return check


def instant(sec: Section, name: str) -> float | None:
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
            f"{sec.key(name)}: expected a date-time with a time zone, e.g. 2027-01-31T00:00:00Z"
        )
    return value.timestamp()


def network(sec: Section, name: str, text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{sec.key(name)}: {text!r} is not an IP network in CIDR form") from exc


def secret(sec: Section, name: str, base: Path) -> str | None:
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


def path_or_none(sec: Section, name: str, base: Path) -> Path | None:
    text = sec.get(name, str, "")
    return base / text if text else None


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost": a connection that never leaves this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- listeners -----------------------------------------------------------------------------


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


def ldap_url(sec: Section, name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise ConfigError(f"{sec.key(name)}: {url!r} is not an ldap:// or ldaps:// URL with a host")
    return url
