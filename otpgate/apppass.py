"""App passwords: one random secret per application, for clients that cannot append a code
(pure, no I/O).

An app password replaces password + code on the listeners and NASes of its scope, and
nowhere else.  What is stored, each inside otpgate's authenticated encryption (``codec.py``):

* ``AppPassword``, one value of the token list: its id, name, scope (LDAP listeners,
  RADIUS clients, optional source networks, optional end), when it was created, and a
  keyed slow hash of the secret — never the secret;
* the hash key, 256 random bits per user, inside the seed's document (``OtpState.app_key``);
* ``tokens.AppUse``, in the use state: when and from where each was last used; the failures and
  lockout of app-password logins (``UsedState.app_failures``/``app_locked_until``), apart
  from those of the codes.

The hash is PBKDF2-HMAC-SHA256 keyed by the user's key (as its salt), ``ITERATIONS``
rounds.  The secret has 140 random bits, so no search of it is feasible at any cost per
guess; the rounds only make a leaked key *and* hash slower to test, and are kept low (200
rounds: 58 µs on this machine's core; an app-password login costs the gateway 0.95x a login
with a code: bench/app_passwords.py, docs/APP-PASSWORDS.md).  The rounds are stored with
each hash.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from otpgate.configfile import Network, in_networks
from otpgate.tokens import b64d, b64e, check_label

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
"""RFC 4648 base32, lower case: no 0/1/8/9, nothing to confuse with O, I, B, g."""
GROUPS, GROUP = 7, 4
SECRET_BITS = GROUPS * GROUP * 5  # 140
FORM = re.compile(r"[a-zA-Z2-7]{4}(?:-[a-zA-Z2-7]{4}){6}")
"""What a typed app password looks like: seven groups of four, dashes between.  The dashes
in their places make a password + code of this form all but impossible, and are what tells
an app password from anything else a user types."""
ITERATIONS = 200
KEY_BYTES = 32
DIGEST_BYTES = 32
MAX_NAME = 64
MAX_PER_USER = 20
"""The largest ``[app_passwords] max_per_user`` (each is a value of the token list)."""


def looks_like_app_password(typed: str) -> bool:
    return len(typed) == GROUPS * (GROUP + 1) - 1 and FORM.fullmatch(typed) is not None


def generate() -> str:
    """A new app password, in groups for typing (shown once)."""
    chars = "".join(secrets.choice(ALPHABET) for _ in range(GROUPS * GROUP))
    return "-".join(chars[i : i + GROUP] for i in range(0, len(chars), GROUP))


def digest(key: bytes, typed: str, iterations: int = ITERATIONS) -> bytes:
    """The keyed slow hash of a typed app password (case and dashes as typed, lowered)."""
    normal = typed.lower().encode("ascii", "replace")
    return hashlib.pbkdf2_hmac("sha256", normal, key, iterations)


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _strings(doc: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    values = doc.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{what}.{key}: expected a list of text")
    return tuple(values)


def _int(doc: Mapping[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what}.{key}: expected a non-negative integer")
    return value


def check_name(name: str) -> str:
    """A name the user gives an app password: 1 to 64 characters, no control characters."""
    if not name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"name: 1 to {MAX_NAME} characters")
    return check_label(name)


def among(front_end: str, where: str, listeners: Sequence[str], nas: Sequence[str]) -> bool:
    """Whether the place ``where`` of a ``front_end`` login is one of ``listeners`` (LDAP
    listen strings) or ``nas`` (RADIUS client names)."""
    return where in {"ldap": listeners, "radius": nas}.get(front_end, ())


@dataclass(frozen=True)
class Scope:
    """Where an app password works: LDAP listeners (listen strings) and RADIUS clients (NAS
    names), narrowed to source networks if any, until ``expires`` (0: no end)."""

    listeners: tuple[str, ...] = ()
    nas: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    expires: int = 0
    parsed: tuple[Network, ...] = field(default=(), init=False, repr=False, compare=False)
    """``networks`` as networks (parsed once, when the record is read)."""

    def __post_init__(self) -> None:
        if not self.listeners and not self.nas:
            raise ValueError("scope: at least one LDAP listener or RADIUS client")
        # ValueError names a text that is no network
        parsed = tuple(ipaddress.ip_network(text, strict=False) for text in self.networks)
        object.__setattr__(self, "parsed", parsed)

    def covers(self, front_end: str, where: str, client: str | None) -> bool:
        """Whether a login on ``where`` (a listen string or a NAS name) from ``client`` is
        inside this scope (the end date is checked apart: it has its own reason)."""
        if not among(front_end, where, self.listeners, self.nas):
            return False
        return not self.networks or in_networks(client, self.parsed, zone=True)

    def text(self) -> str:
        parts = [f"ldap {w}" for w in self.listeners] + [f"radius {n}" for n in self.nas]
        if self.networks:
            parts.append("from " + ", ".join(self.networks))
        return "; ".join(parts)


@dataclass(frozen=True)
class AppPassword:
    """One app password as stored (a value of the token list, encrypted)."""

    id: str
    name: str
    scope: Scope
    created: int
    hash: bytes = field(repr=False)
    iterations: int = ITERATIONS
    by: str = ""
    """The token whose code opened the portal session that created it ("": the CLI): it
    goes with that token (revoked, reset or declared lost) and is held while that token is
    suspended, so an app password a thief made on a stolen phone ends with the phone."""

    def __post_init__(self) -> None:
        check_name(self.name)
        if len(self.hash) != DIGEST_BYTES:
            raise ValueError(f"app password {self.id}: a hash of {len(self.hash)} bytes")
        if not 1 <= self.iterations <= 10_000_000:
            raise ValueError(f"app password {self.id}: {self.iterations} rounds")

    def expired(self, now: float) -> bool:
        return bool(self.scope.expires) and now >= self.scope.expires

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "app",
            "id": self.id,
            "name": self.name,
            "created": self.created,
            "h": b64e(self.hash),
            "i": self.iterations,
            "ldap": list(self.scope.listeners),
            "radius": list(self.scope.nas),
        }
        if self.scope.networks:
            doc["nets"] = list(self.scope.networks)
        if self.scope.expires:
            doc["exp"] = self.scope.expires
        if self.by:
            doc["by"] = self.by
        return doc

    def shown(self) -> dict[str, Any]:
        """For output (``--json``, the portal): without the hash."""
        doc = {k: v for k, v in self.to_dict().items() if k not in ("h", "i", "type", "by")}
        doc["created_by"] = self.by
        doc["scope"] = self.scope.text()
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AppPassword:
        what = "app password"
        ident, name = doc.get("id"), doc.get("name")
        if not isinstance(ident, str) or not isinstance(name, str):
            raise ValueError(f"{what}: expected text id and name")
        scope = Scope(
            _strings(doc, "ldap", what),
            _strings(doc, "radius", what),
            _strings(doc, "nets", what),
            _int(doc, "exp", what, 0),
        )
        by, hashed = doc.get("by", ""), doc.get("h")
        if not isinstance(by, str):
            raise ValueError(f"{what}.by: expected text")
        if not isinstance(hashed, str):
            raise ValueError(f"{what}.h: expected text")
        return cls(
            ident, name, scope, _int(doc, "created", what), b64d(hashed, f"{what}.h"),
            _int(doc, "i", what), by,
        )  # fmt: skip


def is_app_record(doc: Mapping[str, Any]) -> bool:
    """Whether a decoded value of the token list is an app password (not a token)."""
    return doc.get("type") == "app"


def matching(apps: Sequence[AppPassword], key: bytes, typed: str) -> AppPassword | None:
    """The app password ``typed`` is, compared in constant time with every stored hash (one
    slow hash per round count in use, normally one)."""
    found: AppPassword | None = None
    hashes: dict[int, bytes] = {}
    for app in apps:
        if app.iterations not in hashes:
            hashes[app.iterations] = digest(key, typed, app.iterations)
        if hmac.compare_digest(hashes[app.iterations], app.hash):
            found = app
    return found
