"""The records of OTP state as read from and written to the directory (data only).

``UserEntry`` (a user's entry and its values, not yet decoded), ``OtpState`` (decoded),
``StateChange`` (what an update writes) and ``Lookup`` (a search for an entry); the
constants of the compare-and-swap rule.  The mapping and planning live in ``state.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from otpgate.apppass import AppPassword
from otpgate.pin import PinRecord
from otpgate.tokens import Secret, Token, UsedState

T = TypeVar("T")

CAS_CONFLICTS = (16, 19, 20)  # noSuchAttribute, constraintViolation, attributeOrValueExists
ENTRY_EXISTS = 68
INITIAL_USED = b'{"u":{},"v":1}'
"""The fixed first value of ``used``: deterministic, so two first writers collide."""


@dataclass(frozen=True)
class UserEntry:
    """A user's entry and its OTP values as read from the directory, not yet decoded."""

    dn: str
    entry_id: bytes
    seed: bytes | None = None
    tokens: tuple[bytes, ...] = ()
    used: tuple[bytes, ...] = ()
    groups: tuple[str, ...] = ()
    object_classes: frozenset[str] = frozenset()
    state_dn: str = ""
    """The entry that holds the values: the user's own DN, or the user's state entry."""
    state_exists: bool = True
    """False while a user's state entry has not been created (nothing stored yet)."""
    state_classes: frozenset[str] = frozenset()
    """Object classes of the entry holding the values."""
    expires_at: float | None = None
    """Unix time the account expires (AD accountExpires); None: never."""
    disabled: bool = False
    """AD's ACCOUNTDISABLE flag or an OpenLDAP ppolicy lock (``state.py``)."""
    unmigrated: bool = False
    """Container layout: the user's own entry still holds otpgate values (a state kept there
    before ``state_dn`` was set), and no state entry exists: refused until migrated."""
    unknown_groups: tuple[str, ...] = ()
    """Configured groups whose membership could not be read (``engine.memberships``)."""
    attributes: tuple[tuple[str, tuple[bytes, ...]], ...] = ()
    """Further attributes of the user's entry that the gateway reads for its front ends
    (RADIUS reply rules), lower-case names in the order asked, with their values."""
    from_cache: bool = field(default=False, compare=False)
    """Served by the gateway's entry cache: may be up to state_cache_seconds old."""
    decoded: OtpState | None = field(default=None, compare=False, repr=False)
    """These exact values, decoded (``StateMapper.decode`` memo): a returning user costs no
    decryption and no JSON.  Kept only as long as the entry itself (the entry cache)."""

    def cached_copy(self) -> UserEntry:
        """This entry marked ``from_cache`` (what the entry cache hands out).  A plain copy
        of the instance dict: ``dataclasses.replace`` measured ~10x slower, twice per login."""
        copy = object.__new__(UserEntry)
        copy.__dict__.update(self.__dict__)
        copy.__dict__["from_cache"] = True
        return copy

    @property
    def has_values(self) -> bool:
        return self.seed is not None or bool(self.tokens) or bool(self.used)


@dataclass(frozen=True)
class OtpState:
    tokens: tuple[Token, ...] = ()
    secrets: dict[str, Secret] = field(default_factory=dict, repr=False)
    used: UsedState = field(default_factory=UsedState)
    pin: PinRecord | None = field(default=None, repr=False)
    """The PIN and its key, from the seed (None: no PIN, or decoded without the seed)."""
    apps: tuple[AppPassword, ...] = ()
    """App passwords (values of the token list that are not tokens: ``apppass.py``)."""
    app_key: bytes = field(default=b"", repr=False)
    """The key of the app passwords' hashes, from the seed (b"": none, or not decrypted)."""

    def token(self, token_id: str) -> Token | None:
        return next((t for t in self.tokens if t.id == token_id), None)


@dataclass(frozen=True)
class StateChange(Generic[T]):
    """What an update writes: None leaves that part as it is."""

    result: T
    used: UsedState | None = None
    tokens: tuple[Token, ...] | None = None
    secrets: dict[str, Secret] | None = field(default=None, repr=False)
    pin: PinRecord | None = field(default=None, repr=False)
    """A new PIN record for the seed (``pin.NO_PIN``: remove it); its verifier goes in
    ``used``, written in the same Modify."""
    apps: tuple[AppPassword, ...] | None = None
    """The app passwords, all of them (written with the tokens, in the same attribute)."""
    app_key: bytes | None = field(default=None, repr=False)
    """A new key of the app passwords' hashes for the seed (b"": remove it)."""

    @property
    def writes(self) -> bool:
        return not (
            self.used is None
            and self.tokens is None
            and self.secrets is None
            and self.pin is None
            and self.apps is None
            and self.app_key is None
        )


@dataclass(frozen=True)
class Lookup:
    base: str
    scope: int
    filter: str
    """The whole filter as RFC 4515 text."""
    attribute: str | None = None
    """For a search by name: the (attribute=value) part of the filter, unescaped."""
    value: str = ""
    user_filter: bool = True
    """The filter is (or contains) the configured user filter; False: (objectClass=*)."""
    filter_ber: bytes | None = None
    """Another filter, already encoded (``filter`` is its text)."""
