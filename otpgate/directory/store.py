"""OTP state in directory entries: identity resolution, reads, compare-and-swap writes.

Concurrency rule: every write of a user's OTP state is ONE Modify that
deletes the exact old ``used`` value and adds the new one.  The ``used``
value is the version of the user's whole state: a writer that lost a race
gets noSuchAttribute (16) / attributeOrValueExists (20) / constraintViolation
(19), re-reads and retries a bounded number of times.  Permissive Modify is
never sent.  An entry without a ``used`` value first gets a fixed, plain
initial value, so that two first writers collide instead of both adding.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ldaptor import ldapfilter
from twisted.logger import Logger

from otpgate.codec import AttributeCodec, Purpose
from otpgate.config import DirectoryConfig
from otpgate.directory.connection import (
    SCOPE_BASE,
    SUCCESS,
    DirectoryError,
    LdapConnection,
    Modification,
    SearchEntry,
)
from otpgate.directory.pool import ServerPool
from otpgate.tokens import (
    Secret,
    Token,
    UsedState,
    secrets_from_dict,
    secrets_to_dict,
)
from otpgate.vault import Keyring

log = Logger()
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


_DN_LIKE = re.compile(r"^[A-Za-z][\w-]*=.+")


def _escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of an assertion value."""
    return "".join(f"\\{ord(c):02x}" if c in "*()\\\x00" else c for c in value)


class OtpStore:
    def __init__(
        self,
        config: DirectoryConfig,
        keyring: Keyring,
        read_pool: ServerPool,
        write_pool: ServerPool,
    ) -> None:
        self.config = config
        self.read_pool = read_pool
        self.write_pool = write_pool
        self.seed_codec = AttributeCodec(
            config.seed.spec, config.seed.format, Purpose.SEED, keyring
        )
        self.tokens_codec = AttributeCodec(
            config.tokens.spec, config.tokens.format, Purpose.TOKEN, keyring
        )
        self.used_codec = AttributeCodec(
            config.used.spec, config.used.format, Purpose.USED, keyring
        )
        self._user_filter = ldapfilter.parseFilter(config.user_filter)
        self._attributes = [
            config.profile.id_attribute,
            config.seed.spec.name,
            config.tokens.spec.name,
            config.used.spec.name,
            "memberOf",
            "objectClass",
        ]

    # -- identity -----------------------------------------------------------------

    def lookup_filter(self, name: str) -> tuple[str, int, Any]:
        """(base, scope, filter) that find the entry a client-supplied name means."""
        cfg = self.config
        if _DN_LIKE.match(name) and "\\" not in name.split("=", 1)[0]:
            return name, SCOPE_BASE, self._user_filter
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
        text = f"(&{self._user_filter.asText()}({attr}={_escape_filter_value(value)}))"
        return cfg.base_dn, 2, ldapfilter.parseFilter(text)

    def _entry(self, found: SearchEntry) -> UserEntry:
        id_value = found.first(self.config.profile.id_attribute)
        if not id_value:
            raise DirectoryError(
                f"{found.dn} has no {self.config.profile.id_attribute}: cannot key its OTP state"
            )
        seeds = found.attributes.get(self.config.seed.spec.name.lower(), [])
        if len(seeds) > 1:
            raise DirectoryError(
                f"{found.dn}: {self.config.seed.spec.name} has {len(seeds)} values"
            )
        return UserEntry(
            dn=found.dn,
            entry_id=id_value,
            seed=seeds[0] if seeds else None,
            tokens=tuple(found.attributes.get(self.config.tokens.spec.name.lower(), [])),
            used=tuple(found.attributes.get(self.config.used.spec.name.lower(), [])),
            groups=tuple(
                v.decode("utf-8", "replace").lower() for v in found.attributes.get("memberof", [])
            ),
            object_classes=frozenset(
                v.decode("utf-8", "replace").lower()
                for v in found.attributes.get("objectclass", [])
            ),
        )

    async def resolve(self, name: str, conn: LdapConnection | None = None) -> UserEntry:
        """The one entry ``name`` (DN, UPN, DOMAIN\\user or bare name) refers to."""
        base, scope, filter_ = self.lookup_filter(name)
        conn = conn or await self.write_pool.connection()
        found = await conn.search(base, filter_, self._attributes, scope=scope, size_limit=2)
        if not found:
            raise UserNotFound(f"no user {name!r}")
        if len(found) > 1:
            raise AmbiguousUser(f"{name!r} matches more than one entry")
        return self._entry(found[0])

    async def reread(self, user: UserEntry, conn: LdapConnection) -> UserEntry:
        found = await conn.search(user.dn, self._user_filter, self._attributes, scope=SCOPE_BASE)
        if not found:
            raise UserNotFound(f"{user.dn} is gone")
        entry = self._entry(found[0])
        if entry.entry_id != user.entry_id:
            raise UserNotFound(f"{user.dn} is now another entry")
        return entry

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
        if len(states) == 1:
            return states[0]
        # Several values (a multi-valued attribute written outside otpgate): keep the most
        # advanced state of each token, so nothing can move backwards; the next write repairs it.
        merged = states[0]
        for state in states[1:]:
            for tid, use in state.tokens.items():
                if use.last > merged.use_of(tid).last:
                    merged = merged.with_use(tid, use)
            if state.failures > merged.failures or state.locked_until > merged.locked_until:
                merged = UsedState(
                    merged.tokens,
                    max(merged.failures, state.failures),
                    max(merged.locked_until, state.locked_until),
                )
        return merged

    # -- compare-and-swap writes -------------------------------------------------------

    def _used_changes(self, user: UserEntry, new_used: bytes) -> list[Modification]:
        name = self.config.used.spec.name
        changes = [Modification(Modification.DELETE, name, (v,)) for v in user.used]
        changes.append(Modification(Modification.ADD, name, (new_used,)))
        return changes

    def _class_changes(self, user: UserEntry) -> list[Modification]:
        aux = self.config.profile.aux_class
        if aux and aux.lower() not in user.object_classes:
            return [Modification(Modification.ADD, "objectClass", (aux.encode(),))]
        return []

    async def _initialise_used(self, user: UserEntry, conn: LdapConnection) -> None:
        add = Modification(Modification.ADD, self.config.used.spec.name, (INITIAL_USED,))
        code, message = await conn.modify(user.dn, [*self._class_changes(user), add])
        if code != SUCCESS and code not in CAS_CONFLICTS:
            raise DirectoryError(f"{user.dn}: cannot initialise OTP state: {code} {message}", code)

    async def update(
        self,
        user: UserEntry,
        change: Callable[[OtpState], Awaitable[StateChange[T]] | StateChange[T]],
    ) -> tuple[T, UserEntry]:
        """Apply ``change`` to the user's current state with compare-and-swap, retrying races.

        ``change`` sees the freshly decoded state and returns what to write
        (and a result to hand back); it may be called several times.
        """
        conn = await self.write_pool.connection()
        for _attempt in range(self.config.cas_retries):
            if not user.used:
                await self._initialise_used(user, conn)
                user = await self.reread(user, conn)
                continue
            state = self.decode(user)
            outcome = change(state)
            planned = outcome if isinstance(outcome, StateChange) else await outcome
            if planned.used is None and planned.tokens is None and planned.secrets is None:
                return planned.result, user
            changes = self._encode(user, state, planned)
            code, message = await conn.modify(user.dn, changes)
            if code == SUCCESS:
                return planned.result, user
            if code not in CAS_CONFLICTS:
                raise DirectoryError(f"{user.dn}: write refused: {code} {message}", code)
            log.debug("CAS conflict on {dn} ({code}); re-reading", dn=user.dn, code=code)
            user = await self.reread(user, conn)
        raise ConcurrentUpdate(
            f"{user.dn}: OTP state changed under us {self.config.cas_retries} times; giving up"
        )

    def _encode(
        self, user: UserEntry, state: OtpState, planned: StateChange[Any]
    ) -> list[Modification]:
        eid, who = user.entry_id, user.dn
        used = planned.used if planned.used is not None else state.used
        changes = self._used_changes(user, self.used_codec.encode(used.to_dict(), eid, who))
        if planned.secrets is not None:
            name = self.config.seed.spec.name
            if user.seed is not None:
                changes.append(Modification(Modification.DELETE, name, (user.seed,)))
            if planned.secrets:
                raw = self.seed_codec.encode(secrets_to_dict(planned.secrets), eid, who)
                changes.append(Modification(Modification.ADD, name, (raw,)))
        if planned.tokens is not None:
            name = self.config.tokens.spec.name
            if user.tokens:
                changes.append(Modification(Modification.DELETE, name, user.tokens))
            if planned.tokens:
                raws = tuple(
                    self.tokens_codec.encode(t.to_dict(), eid, who) for t in planned.tokens
                )
                changes.append(Modification(Modification.ADD, name, raws))
        return changes


@dataclass(frozen=True)
class StateChange(Generic[T]):
    """What an update writes: None leaves that part as it is."""

    result: T
    used: UsedState | None = None
    tokens: tuple[Token, ...] | None = None
    secrets: dict[str, Secret] | None = field(default=None, repr=False)
