"""Mapping between directory entries and OTP state, and planning of writes (pure).

Used by the async store (ldaptor, the gateway) and the sync store (ldap3, the
CLI): everything here is data in, data out.

Concurrency rule: every write of a user's OTP state is ONE Modify that
deletes the exact old ``used`` value(s) and adds the new one.  The ``used``
value is the version of the user's whole state: a writer that lost a race
gets noSuchAttribute (16) / constraintViolation (19) / attributeOrValueExists
(20), re-reads and retries a bounded number of times.  Permissive Modify is
never sent.  An entry without a ``used`` value first gets the fixed value
``INITIAL_USED``, so that two first writers collide instead of both adding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from otpgate.codec import AttributeCodec, Purpose
from otpgate.config import DirectoryConfig
from otpgate.directory.ldapdata import (
    SCOPE_BASE,
    SCOPE_SUBTREE,
    DirectoryError,
    Modification,
    SearchEntry,
)
from otpgate.tokens import Secret, Token, UsedState, secrets_from_dict, secrets_to_dict
from otpgate.vault import Keyring

T = TypeVar("T")

CAS_CONFLICTS = (16, 19, 20)  # noSuchAttribute, constraintViolation, attributeOrValueExists
INITIAL_USED = b'{"u":{},"v":1}'
"""The fixed first value of ``used``: plain JSON (decoders accept it) and deterministic."""


class UserNotFound(DirectoryError):
    pass


class AmbiguousUser(DirectoryError):
    pass


class ConcurrentUpdate(DirectoryError):
    """Lost the compare-and-swap race more often than the configured retries."""


@dataclass(frozen=True)
class UserEntry:
    """A user's entry as read from the directory: raw OTP values, not yet decoded."""

    dn: str
    entry_id: bytes
    seed: bytes | None = None
    tokens: tuple[bytes, ...] = ()
    used: tuple[bytes, ...] = ()
    groups: tuple[str, ...] = ()
    object_classes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OtpState:
    tokens: tuple[Token, ...] = ()
    secrets: dict[str, Secret] = field(default_factory=dict, repr=False)
    used: UsedState = field(default_factory=UsedState)

    def token(self, token_id: str) -> Token | None:
        return next((t for t in self.tokens if t.id == token_id), None)


@dataclass(frozen=True)
class StateChange(Generic[T]):
    """What an update writes: None leaves that part as it is."""

    result: T
    used: UsedState | None = None
    tokens: tuple[Token, ...] | None = None
    secrets: dict[str, Secret] | None = field(default=None, repr=False)

    @property
    def writes(self) -> bool:
        return not (self.used is None and self.tokens is None and self.secrets is None)


@dataclass(frozen=True)
class Lookup:
    base: str
    scope: int
    filter: str
    """The whole filter as RFC 4515 text."""
    attribute: str | None = None
    """For a search by name: the (attribute=value) part of the filter, unescaped."""
    value: str = ""


_DN_LIKE = re.compile(r"^[A-Za-z][\w-]*=.+")


def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of an assertion value."""
    return "".join(f"\\{ord(c):02x}" if c in "*()\\\x00" else c for c in value)


class StateMapper:
    """Reads user entries into OTP state and plans the Modify that writes it back."""

    def __init__(self, config: DirectoryConfig, keyring: Keyring) -> None:
        self.config = config
        self.seed_codec = AttributeCodec(
            config.seed.spec, config.seed.format, Purpose.SEED, keyring
        )
        self.tokens_codec = AttributeCodec(
            config.tokens.spec, config.tokens.format, Purpose.TOKEN, keyring
        )
        self.used_codec = AttributeCodec(
            config.used.spec, config.used.format, Purpose.USED, keyring
        )
        self.attributes = (
            config.profile.id_attribute,
            config.seed.spec.name,
            config.tokens.spec.name,
            config.used.spec.name,
            "memberOf",
            "objectClass",
        )

    # -- identity -----------------------------------------------------------------

    def lookup(self, name: str) -> Lookup:
        """Where and how to search for the entry a client-supplied name means."""
        cfg = self.config
        if _DN_LIKE.match(name) and "\\" not in name.split("=", 1)[0]:
            return Lookup(name, SCOPE_BASE, cfg.user_filter)
        if "\\" in name:
            domain, _, user = name.partition("\\")
            if cfg.domains and domain.upper() not in cfg.domains:
                raise UserNotFound(f"{name!r}: domain {domain!r} is not one of {cfg.domains}")
            attr, value = cfg.search_attribute, user
        elif "@" in name:
            attr, value = cfg.upn_attribute, name
        else:
            attr, value = cfg.search_attribute, name
        if not value:
            raise UserNotFound("empty user name")
        text = f"(&{cfg.user_filter}({attr}={escape_filter_value(value)}))"
        return Lookup(cfg.base_dn, SCOPE_SUBTREE, text, attr, value)

    def reread_lookup(self, user: UserEntry) -> Lookup:
        return Lookup(user.dn, SCOPE_BASE, self.config.user_filter)

    def one_entry(self, name: str, found: list[SearchEntry]) -> UserEntry:
        if not found:
            raise UserNotFound(f"no user {name!r}")
        if len(found) > 1:
            raise AmbiguousUser(f"{name!r} matches more than one entry")
        return self.entry(found[0])

    def same_entry(self, user: UserEntry, found: list[SearchEntry]) -> UserEntry:
        if not found:
            raise UserNotFound(f"{user.dn} is gone")
        entry = self.entry(found[0])
        if entry.entry_id != user.entry_id:
            raise UserNotFound(f"{user.dn} is now another entry")
        return entry

    def entry(self, found: SearchEntry) -> UserEntry:
        cfg = self.config
        id_value = found.first(cfg.profile.id_attribute)
        if not id_value:
            raise DirectoryError(
                f"{found.dn} has no {cfg.profile.id_attribute}: cannot key its OTP state"
            )
        seeds = found.attributes.get(cfg.seed.spec.name.lower(), [])
        if len(seeds) > 1:
            raise DirectoryError(f"{found.dn}: {cfg.seed.spec.name} has {len(seeds)} values")
        return UserEntry(
            dn=found.dn,
            entry_id=id_value,
            seed=seeds[0] if seeds else None,
            tokens=tuple(found.attributes.get(cfg.tokens.spec.name.lower(), [])),
            used=tuple(found.attributes.get(cfg.used.spec.name.lower(), [])),
            groups=tuple(
                v.decode("utf-8", "replace").lower() for v in found.attributes.get("memberof", [])
            ),
            object_classes=frozenset(
                v.decode("utf-8", "replace").lower()
                for v in found.attributes.get("objectclass", [])
            ),
        )

    # -- decoding -----------------------------------------------------------------------

    def decode(self, user: UserEntry) -> OtpState:
        eid, who = user.entry_id, user.dn
        secret_map = (
            secrets_from_dict(self.seed_codec.decode(user.seed, eid, who)) if user.seed else {}
        )
        tokens = tuple(Token.from_dict(self.tokens_codec.decode(v, eid, who)) for v in user.tokens)
        return OtpState(tokens=tokens, secrets=secret_map, used=self._decode_used(user))

    def _decode_used(self, user: UserEntry) -> UsedState:
        states = [
            UsedState.from_dict(self.used_codec.decode(v, user.entry_id, user.dn))
            for v in user.used
        ]
        if not states:
            return UsedState()
        # Several values (a multi-valued attribute written outside otpgate): keep the most
        # advanced state of each token, so nothing can move backwards; the next write repairs it.
        merged = states[0]
        for state in states[1:]:
            for tid, use in state.tokens.items():
                if use.last > merged.use_of(tid).last:
                    merged = merged.with_use(tid, use)
            merged = UsedState(
                merged.tokens,
                max(merged.failures, state.failures),
                max(merged.locked_until, state.locked_until),
            )
        return merged

    # -- planning writes ------------------------------------------------------------------

    def _class_changes(self, user: UserEntry) -> list[Modification]:
        aux = self.config.profile.aux_class
        if aux and aux.lower() not in user.object_classes:
            return [Modification(Modification.ADD, "objectClass", (aux.encode(),))]
        return []

    def initialise(self, user: UserEntry) -> list[Modification]:
        """The Modify that gives an entry its first ``used`` value (and class, if needed)."""
        add = Modification(Modification.ADD, self.config.used.spec.name, (INITIAL_USED,))
        return [*self._class_changes(user), add]

    def after(self, user: UserEntry, changes: list[Modification]) -> UserEntry:
        """The entry as it is once ``changes`` (a plan of ours) have been applied."""
        values = {
            self.config.seed.spec.name.lower(): list(filter(None, [user.seed])),
            self.config.tokens.spec.name.lower(): list(user.tokens),
            self.config.used.spec.name.lower(): list(user.used),
        }
        classes = set(user.object_classes)
        for mod in changes:
            name = mod.attribute.lower()
            if name == "objectclass":
                classes.update(v.decode().lower() for v in mod.values)
                continue
            current = values[name]
            if mod.op == Modification.DELETE:
                values[name] = [v for v in current if v not in mod.values]
            else:
                values[name] = current + list(mod.values)
        seed = values[self.config.seed.spec.name.lower()]
        return replace(
            user,
            seed=seed[0] if seed else None,
            tokens=tuple(values[self.config.tokens.spec.name.lower()]),
            used=tuple(values[self.config.used.spec.name.lower()]),
            object_classes=frozenset(classes),
        )

    def plan(self, user: UserEntry, state: OtpState, change: StateChange[T]) -> list[Modification]:
        """The one Modify that writes ``change`` if ``user`` is still what we read."""
        eid, who = user.entry_id, user.dn
        used = change.used if change.used is not None else state.used
        used_name = self.config.used.spec.name
        changes = [Modification(Modification.DELETE, used_name, (v,)) for v in user.used]
        changes.append(
            Modification(
                Modification.ADD, used_name, (self.used_codec.encode(used.to_dict(), eid, who),)
            )
        )
        if change.secrets is not None:
            name = self.config.seed.spec.name
            if user.seed is not None:
                changes.append(Modification(Modification.DELETE, name, (user.seed,)))
            if change.secrets:
                raw = self.seed_codec.encode(secrets_to_dict(change.secrets), eid, who)
                changes.append(Modification(Modification.ADD, name, (raw,)))
        if change.tokens is not None:
            name = self.config.tokens.spec.name
            if user.tokens:
                changes.append(Modification(Modification.DELETE, name, user.tokens))
            if change.tokens:
                raws = tuple(self.tokens_codec.encode(t.to_dict(), eid, who) for t in change.tokens)
                changes.append(Modification(Modification.ADD, name, raws))
        return changes
