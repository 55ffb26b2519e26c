"""``[radius]``: the RADIUS listeners, the NASes (``[[radius.clients]]``) and their limits."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pyrad.dictionary import Dictionary

from otpgate.configfile import Network, Section, network, non_negative, positive, secret
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.profiles import AD_SELF_WRITABLE, SECRET_ATTRIBUTES
from otpgate.errors import ConfigError
from otpgate.radius.attributes import dictionary_error, load_dictionary
from otpgate.radius.reply import ReplyRules, check_sources, parse_rules

RADIUS_MODES = ("append", "challenge", "otp-only")
RADIUS_UNAVAILABLE_REPLIES = ("none", "reject")
MAX_FAILOVER_REPLAY_SECONDS = 30.0
"""Also ``otpgate.auth.retransmit.MAX_WINDOW_SECONDS``: stored requests older than that go."""


@dataclass(frozen=True)
class RadiusClient:
    network: Network
    secret: bytes = field(repr=False)
    mode: str = "append"
    name: str = ""
    allow_chap: bool = False
    allow_mschapv2: bool = False
    require_message_authenticator: bool = True
    reply: ReplyRules | None = None
    """``reply`` and ``reply_match``: the attributes its Access-Accepts carry (reply.py)."""
    accept_message: str = ""
    """Reply-Message of every Access-Accept ("": none), for NASes that show one."""
    allow_groups: tuple[str, ...] = ()
    """Only members of one of these groups may log in through this NAS (empty: anyone)."""
    deny_groups: tuple[str, ...] = ()
    """Members of any of these groups may not (deny wins over allow)."""
    require_pin: bool = False
    """Logins without a password (otp-only, CHAP, MS-CHAPv2) need the user's PIN before the
    code; a user without a PIN is refused."""
    enforce: bool = True
    """False: report-only (``auth/reportonly.py``); default ``[radius] enforce``."""

    @property
    def nas_name(self) -> str:
        """The name exemptions, app passwords, the audit and /metrics know the NAS by: its
        name, or its network where it has none."""
        return self.name or str(self.network)

    @property
    def pin_logins(self) -> bool:
        """Whether some login through this NAS carries no password (a PIN applies)."""
        return self.mode == "otp-only" or self.allow_chap or self.allow_mschapv2


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
    failover_replay_seconds: float = 0.0
    """Seconds during which the identical Access-Request (a NAS failing over from another
    gateway) is accepted again after its login (0: off; at most 30).  See docs/RADIUS.md."""
    dictionaries: tuple[Path, ...] = ()
    enforce: bool = True
    """False: every NAS without its own ``enforce`` is in report-only mode."""
    """RADIUS dictionary files read after otpgate's own (FreeRADIUS syntax), for the
    attributes of other vendors in reply rules."""

    @property
    def reply_groups(self) -> tuple[str, ...]:
        """The groups the clients' reply rules test: every resolved entry carries them."""
        return tuple(dict.fromkeys(g for c in self.clients if c.reply for g in c.reply.groups))

    @property
    def reply_attributes(self) -> tuple[str, ...]:
        """The attributes the clients' reply rules read: read with every user entry."""
        return tuple(
            dict.fromkeys(a for c in self.clients if c.reply for a in c.reply.attributes)
        )


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


def _client(
    sec: Section,
    base: Path,
    dictionary: Callable[[], Dictionary] = load_dictionary,
    enforce: bool = True,
) -> RadiusClient:
    shared = secret(sec, "secret", base)
    if not shared:
        raise ConfigError(f"{sec.key('secret')} (or secret_file) is required")
    if len(shared) < 16:
        raise ConfigError(f"{sec.key('secret')}: use a shared secret of at least 16 characters")
    cls = RadiusClient
    client = RadiusClient(
        network=network(sec, "address", sec.require("address", str, "an IP or CIDR")),
        secret=shared.encode(),
        mode=sec.choice("mode", RADIUS_MODES, cls.mode),
        name=sec.value(cls, "name", str),
        allow_chap=sec.value(cls, "allow_chap", bool),
        allow_mschapv2=sec.value(cls, "allow_mschapv2", bool),
        require_message_authenticator=sec.value(cls, "require_message_authenticator", bool),
        reply=parse_rules(sec, dictionary),
        accept_message=sec.value(cls, "accept_message", str),
        allow_groups=sec.dns("allow_groups"),
        deny_groups=sec.dns("deny_groups"),
        require_pin=sec.value(cls, "require_pin", bool),
        enforce=sec.get("enforce", bool, enforce),
    )
    if len(client.accept_message.encode()) > 253:
        raise ConfigError(f"{sec.key('accept_message')}: at most 253 octets of UTF-8")
    if client.require_pin and not client.pin_logins:
        raise ConfigError(
            f"{sec.key('require_pin')}: a PIN goes before the code where no password arrives "
            '(mode = "otp-only", allow_chap, allow_mschapv2); this client has none of them'
        )
    sec.done()
    return client


def _dictionary_loader(key: str, files: tuple[Path, ...]) -> Callable[[], Dictionary]:
    """The RADIUS dictionaries, read once, on first use (a configuration without reply rules
    reads none); the operator's files are read now, so that their errors show."""

    @cache
    def load() -> Dictionary:
        try:
            return load_dictionary(files)
        except Exception as exc:  # pyrad raises ParseError, OSError, ValueError, KeyError...
            raise ConfigError(f"{key}: {dictionary_error(exc)}") from exc

    if files:
        load()
    return load


def parse_radius(sec: Section, base: Path) -> RadiusConfig:
    clients_raw = sec.raw("clients") or []
    if not isinstance(clients_raw, list):
        raise ConfigError(f"{sec.key('clients')}: expected [[radius.clients]] tables")
    clients: list[RadiusClient] = []
    dictionaries = tuple(base / name for name in sec.strings("dictionaries"))
    dictionary = _dictionary_loader(sec.key("dictionaries"), dictionaries)
    enforce = sec.value(RadiusConfig, "enforce", bool)
    for i, raw in enumerate(clients_raw):
        if not isinstance(raw, dict):
            raise ConfigError(f"{sec.key('clients')}[{i}]: expected a table")
        csec = Section(raw, f"{sec.path}.clients[{i}]")
        clients.append(_client(csec, base, dictionary, enforce))
        for j, other in enumerate(clients[:-1]):
            if other.network == clients[-1].network:
                raise ConfigError(f"{csec.key('address')}: {other.network} is already clients[{j}]")
            # A NAS is named by its name, or its network where it has none: exemptions, app
            # passwords, the audit and /metrics tell NASes apart by it.
            mine, theirs = clients[-1], other
            if mine.nas_name == theirs.nas_name:
                key = csec.key("name") if mine.name else csec.key("address")
                raise ConfigError(
                    f"{key}: {mine.nas_name!r} already names clients[{j}] "
                    "(each NAS needs a name of its own)"
                )
            if (mine.name and mine.name == str(theirs.network)) or (
                theirs.name and theirs.name == str(mine.network)
            ):
                raise ConfigError(
                    f"{csec.key('name')}: a NAS named like another's network "
                    f"(clients[{j}]) would be taken for it; choose another name"
                )
    listen = sec.strings("listen")
    for spec in listen:
        sec.check("listen", spec, parse_radius_listen)
    cls = RadiusConfig
    result = RadiusConfig(
        listen=listen,
        clients=tuple(clients),
        reject_delay=sec.value(cls, "reject_delay", float, non_negative),
        challenge_timeout=sec.value(cls, "challenge_timeout", float, positive),
        rate_limit_per_client=sec.value(cls, "rate_limit_per_client", float, non_negative),
        max_attributes=sec.value(cls, "max_attributes", int, positive),
        challenge_message=sec.value(cls, "challenge_message", str),
        max_challenges=sec.value(cls, "max_challenges", int, positive),
        duplicate_cache_seconds=sec.value(cls, "duplicate_cache_seconds", float, positive),
        duplicate_cache_size=sec.value(cls, "duplicate_cache_size", int, positive),
        rate_limit_burst=sec.value(cls, "rate_limit_burst", float, non_negative),
        status_server=sec.value(cls, "status_server", bool),
        unavailable_reply=sec.choice(
            "unavailable_reply", RADIUS_UNAVAILABLE_REPLIES, cls.unavailable_reply
        ),
        bind_connections=sec.value(cls, "bind_connections", int, non_negative),
        failover_replay_seconds=sec.value(cls, "failover_replay_seconds", float, non_negative),
        dictionaries=dictionaries,
        enforce=enforce,
    )
    if result.failover_replay_seconds > MAX_FAILOVER_REPLAY_SECONDS:
        raise ConfigError(
            f"{sec.key('failover_replay_seconds')}: {result.failover_replay_seconds:g} is too "
            f"long: 0 (off) to {MAX_FAILOVER_REPLAY_SECONDS:g} seconds (a NAS fails over within "
            "seconds)"
        )
    if not 1 <= len(result.challenge_message.encode()) <= 253:
        raise ConfigError(f"{sec.key('challenge_message')}: must be 1 to 253 octets of UTF-8")
    if result.max_attributes > 2038:
        raise ConfigError(
            f"{sec.key('max_attributes')}: a 4096-octet packet holds at most 2038 attributes"
        )
    sec.done()
    return result


def check_reply_sources(radius: RadiusConfig, directory: DirectoryConfig) -> None:
    """The attributes reply rules read must be neither otpgate's own state, nor passwords,
    nor (on AD) attributes every user may write in their own entry: an insider would grant
    herself a VLAN, an address or a group name by editing her entry."""
    forbidden = dict.fromkeys(SECRET_ATTRIBUTES, "a password attribute is never read for a reply")
    for mapped in (directory.seed, directory.tokens, directory.used, directory.inventory):
        forbidden[mapped.spec.name.lower()] = (
            f"{mapped.spec.name} holds otpgate's encrypted state ([directory.attributes])"
        )
    if directory.profile.server == "ad":
        for name in AD_SELF_WRITABLE:
            forbidden.setdefault(
                name,
                f"every AD user may write their own {name} (Personal-Information and "
                "Web-Information property sets): it cannot decide what a user gets",
            )
    for client in radius.clients:
        if client.reply is not None:
            check_sources(client.reply, forbidden)
