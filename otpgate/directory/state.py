"""Mapping between directory entries and OTP state, and planning of writes (pure).

Where the state lives (``[directory] state_dn``):

* in the user's own entry (the default on OpenLDAP): the mapped seed, tokens and used
  attributes of the user entry;
* in a state entry ``cn=<user's entry UUID>,<state_dn>`` (required on AD): the same
  attributes on an entry only the service account can write.  On a default AD every
  user may write their own postalAddress/registeredAddress/wWWHomePage, and a genuine old
  ciphertext written back would roll the use state back (replay); nobody but the service
  account can write below ``state_dn``.

Concurrency rule: every write of a user's OTP state is ONE Modify that deletes the exact
old ``used`` value(s) and adds the new one.  The ``used`` value is the version of the
user's whole state: a writer that lost a race gets noSuchAttribute (16) /
constraintViolation (19) / attributeOrValueExists (20), re-reads and retries a bounded
number of times.  Permissive Modify is never sent.  A state without a ``used`` value first
gets the fixed value ``INITIAL_USED`` (a state entry is created holding it: entryAlreadyExists
(68) is the lost race), so that two first writers collide instead of both adding.

Integrity: every value is an authenticated envelope bound to the user's entry id, the
attribute and the purpose (``codec.py``); the only plain value accepted is
``INITIAL_USED``, read as "nothing used yet", and only while the user has no token and no
seed.  A state whose parts do not belong together (use state or secrets of tokens that are
not there, tokens without their secret, a PIN in the seed that the use state's PIN digest
does not confirm, or a digest without its PIN) is refused as tampered.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from dataclasses import replace

from otpgate.apppass import KEY_BYTES as APP_KEY_BYTES
from otpgate.apppass import AppPassword, is_app_record
from otpgate.codec import AttributeCodec, Purpose
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.ldapdata import SCOPE_BASE, SCOPE_SUBTREE, Modification, SearchEntry
from otpgate.directory.records import (
    INITIAL_USED,
    Lookup,
    OtpState,
    StateChange,
    T,
    UserEntry,
)

# Re-exported for the state engine, the stores and the pipeline, which import them from here.
from otpgate.dn import below
from otpgate.errors import (
    AmbiguousUser,
    DirectoryError,
    StateNotMigrated,
    TamperedState,
    UserNotFound,
)
from otpgate.pin import PinRecord, consistent
from otpgate.tokens import (
    MAX_SENDS_KEPT,
    Token,
    TokenType,
    TokenUse,
    UsedState,
    b64d,
    b64e,
    secrets_from_dict,
    secrets_to_dict,
)
from otpgate.vault import Keyring

_DN_LIKE = re.compile(r"[A-Za-z][\w-]*=.+")
ANY_ENTRY = "(objectClass=*)"
PRINCIPAL_CLASSES = frozenset(
    {"user", "computer", "person", "organizationalperson", "inetorgperson", "contact", "group"}
)
"""Classes a state entry must not have: it is no account, nothing anyone could bind as."""
FILETIME_UNIX_OFFSET = 11644473600
NEVER_EXPIRES = (0, 0x7FFFFFFFFFFFFFFF)


def _account_expiry(raw: bytes | None) -> float | None:
    """AD accountExpires (100 ns since 1601, 0 or 2^63-1 for never) as Unix time."""
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        return 0.0  # unreadable: treat as expired (fail closed)
    if value in NEVER_EXPIRES:
        return None
    return value / 1e7 - FILETIME_UNIX_OFFSET


ACCOUNTDISABLE = 0x2


def _disabled(found: SearchEntry) -> bool:
    """AD's ACCOUNTDISABLE flag, or an OpenLDAP ppolicy lock (any ``pwdAccountLockedTime``:
    the lock lasts until an admin or the lockout duration lifts it, and a login that binds
    nothing cannot tell which, so it counts as disabled)."""
    flags = found.first("userAccountControl")
    if flags is not None:
        try:
            if int(flags) & ACCOUNTDISABLE:
                return True
        except ValueError:
            return True  # unreadable: fail closed
    return bool(found.first("pwdAccountLockedTime"))


def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of an assertion value."""
    return "".join(f"\\{ord(c):02x}" if c in "*()\\\x00" else c for c in value)


def _order(use: TokenUse) -> tuple[int, int, bool, int]:
    """Which of two values of one token's use is ahead after a replication conflict."""
    return (use.last, use.sent, not use.code, use.misses)


class StateMapper:
    """Reads user entries into OTP state and plans the operations that write it back."""

    def __init__(
        self, config: DirectoryConfig, keyring: Keyring, extra_attributes: tuple[str, ...] = ()
    ) -> None:
        """``extra_attributes``: read with every user entry for the front ends (RADIUS reply
        rules) and kept in ``UserEntry.attributes``."""
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
        self.container = config.state_dn
        self.state_attributes = (
            config.seed.spec.name,
            config.tokens.spec.name,
            config.used.spec.name,
            "objectClass",
        )
        identity: tuple[str, ...] = (config.profile.id_attribute, "memberOf", "objectClass")
        # Whether the account is disabled, for logins that bind nothing as the user (app
        # passwords): AD's ACCOUNTDISABLE flag (a site's own user filter may not exclude
        # it), OpenLDAP ppolicy's lock.
        if config.profile.server == "ad":
            identity = (*identity, "accountExpires", "userAccountControl")
        else:
            identity = (*identity, "pwdAccountLockedTime")
        # In the container layout the user's own values are read too, only to see whether a
        # state kept there before still waits to be migrated (``otpgate migrate-state``).
        self.user_attributes = (*identity, *self.state_attributes[:3])
        self._ad = config.profile.server == "ad"
        read = {a.lower() for a in self.user_attributes}
        self.extra = tuple(dict.fromkeys(a.lower() for a in extra_attributes))
        self.user_attributes += tuple(a for a in self.extra if a not in read)

    @property
    def attributes(self) -> tuple[str, ...]:
        """What a search for a user entry asks for."""
        return self.user_attributes

    # -- identity -----------------------------------------------------------------

    def lookup(self, name: str) -> Lookup:
        """Where and how to search for the entry a client-supplied name means."""
        cfg = self.config
        if _DN_LIKE.fullmatch(name) and "\\" not in name.split("=", 1)[0]:
            if not below(name, cfg.base_dn):
                # Users are the entries below base_dn, whatever the name form: the proof that
                # users cannot write their state covers only those.
                raise UserNotFound(f"{name!r} is not below {cfg.base_dn}")
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

    def state_lookup(self, user: UserEntry) -> Lookup:
        return Lookup(user.state_dn, SCOPE_BASE, ANY_ENTRY, user_filter=False)

    def one_entry(self, name: str, found: list[SearchEntry]) -> UserEntry:
        if not found:
            raise UserNotFound(f"no user {name!r}")
        if len(found) > 1:
            raise AmbiguousUser(f"{name!r} matches more than one entry")
        return self.entry(found[0])

    def same_entry(self, user: UserEntry, found: list[SearchEntry]) -> UserEntry:
        """``user`` read again (for a compare-and-swap retry): its group memberships, which
        take more than this read to establish (``engine.memberships``), are kept."""
        if not found:
            raise UserNotFound(f"{user.dn} is gone")
        entry = self.entry(found[0])
        if entry.entry_id != user.entry_id:
            raise UserNotFound(f"{user.dn} is now another entry")
        return replace(entry, groups=user.groups, unknown_groups=user.unknown_groups)

    # -- where state entries are ----------------------------------------------------

    def state_rdn(self, entry_id: bytes) -> str:
        """The cn of a user's state entry: the entry's UUID in its usual text form."""
        if self._ad:
            return str(uuid.UUID(bytes_le=entry_id))
        return entry_id.decode("ascii").lower()

    def entry_id_of_rdn(self, rdn: str) -> bytes:
        """The user's entry id back from a state entry's cn (ValueError if it is none)."""
        if self._ad:
            return uuid.UUID(rdn).bytes_le
        return str(uuid.UUID(rdn)).encode("ascii")

    def state_dn_of(self, entry_id: bytes) -> str:
        if self.container is None:
            raise ValueError("state lives in user entries ([directory].state_dn is not set)")
        return f"cn={self.state_rdn(entry_id)},{self.container}"

    # -- reading entries --------------------------------------------------------------------

    def entry(self, found: SearchEntry) -> UserEntry:
        """A user entry from a search; in the container layout its state is read next."""
        cfg = self.config
        if not below(found.dn, cfg.base_dn):
            raise UserNotFound(f"{found.dn!r} is not below {cfg.base_dn}")
        id_value = found.first(cfg.profile.id_attribute)
        if not id_value:
            raise DirectoryError(
                f"{found.dn} has no {cfg.profile.id_attribute}: cannot key its OTP state"
            )
        classes = frozenset(
            v.decode("utf-8", "replace").lower() for v in found.attributes.get("objectclass", [])
        )
        groups = tuple(
            v.decode("utf-8", "replace").lower() for v in found.attributes.get("memberof", [])
        )
        expires_at = _account_expiry(found.first("accountExpires"))
        disabled = _disabled(found)
        extra = tuple((a, tuple(found.attributes.get(a, ()))) for a in self.extra)
        if self.container is not None:
            return UserEntry(
                dn=found.dn,
                entry_id=id_value,
                groups=groups,
                object_classes=classes,
                state_dn=self.state_dn_of(id_value),
                state_exists=False,
                expires_at=expires_at,
                disabled=disabled,
                unmigrated=bool(self.own_values(found)),
                attributes=extra,
            )
        user = UserEntry(
            dn=found.dn,
            entry_id=id_value,
            groups=groups,
            object_classes=classes,
            expires_at=expires_at,
            disabled=disabled,
            attributes=extra,
        )
        return self._with_values(
            user,
            found,
            found.dn,
            classes,
        )

    def own_values(self, found: SearchEntry) -> dict[str, list[bytes]]:
        """otpgate's values in a user's own entry, by attribute (envelopes and the
        placeholder only: an AD user's real postal address is none of them)."""
        own: dict[str, list[bytes]] = {}
        for codec in (self.seed_codec, self.tokens_codec, self.used_codec):
            name = codec.spec.name
            values = [
                v
                for v in found.attributes.get(name.lower(), [])
                if v == INITIAL_USED or codec.is_envelope(v)
            ]
            if values:
                own[name] = values
        return own

    def with_state(self, user: UserEntry, found: list[SearchEntry]) -> UserEntry:
        """``user`` with the values of its state entry (container layout)."""
        if not found:
            return replace(
                user, seed=None, tokens=(), used=(), state_exists=False, decoded=None
            )
        holder = found[0]
        classes = frozenset(
            v.decode("utf-8", "replace").lower() for v in holder.attributes.get("objectclass", [])
        )
        wanted = {c.lower() for c in self.config.state_classes} - {"top"}
        if not wanted <= classes or classes & PRINCIPAL_CLASSES:
            # Something else under that name (planted, or an account): never state to trust.
            raise TamperedState(
                f"{user.state_dn} is not an otpgate state entry (object classes "
                f"{', '.join(sorted(classes))}): refusing it"
            )
        return self._with_values(user, holder, user.state_dn, classes)

    def _with_values(
        self, user: UserEntry, holder: SearchEntry, state_dn: str, classes: frozenset[str]
    ) -> UserEntry:
        cfg = self.config
        seeds = holder.attributes.get(cfg.seed.spec.name.lower(), [])
        if len(seeds) > 1:
            raise DirectoryError(f"{holder.dn}: {cfg.seed.spec.name} has {len(seeds)} values")
        return replace(
            user,
            seed=seeds[0] if seeds else None,
            tokens=tuple(holder.attributes.get(cfg.tokens.spec.name.lower(), [])),
            used=tuple(holder.attributes.get(cfg.used.spec.name.lower(), [])),
            state_dn=state_dn,
            state_exists=True,
            state_classes=classes,
            decoded=None,
        )

    def state_entry(self, found: SearchEntry) -> UserEntry:
        """A state entry alone (the CLI's scans): its user's id from its cn, no user DN."""
        rdn = found.first("cn")
        try:
            entry_id = self.entry_id_of_rdn((rdn or b"").decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DirectoryError(f"{found.dn}: not an otpgate state entry (cn)") from exc
        classes = frozenset(
            v.decode("utf-8", "replace").lower() for v in found.attributes.get("objectclass", [])
        )
        return self._with_values(
            UserEntry(dn=found.dn, entry_id=entry_id), found, found.dn, classes
        )

    # -- decoding -----------------------------------------------------------------------

    def decode(self, user: UserEntry, with_secrets: bool = True) -> OtpState:
        """The user's state; CodecError for a value otpgate did not write, TamperedState for
        values that do not belong together.  ``with_secrets=False`` never decrypts the seed
        (listing)."""
        if user.decoded is not None:
            return user.decoded
        eid, who = user.entry_id, user.dn
        if user.unmigrated and not user.state_exists:
            raise StateNotMigrated(
                f"{who}: its own entry holds otpgate values but [directory].state_dn has no "
                "state entry for it: refusing (run `otpgate migrate-state`)"
            )
        seed_doc = self.seed_codec.decode(user.seed, eid, who) if with_secrets and user.seed else {}
        secret_map = secrets_from_dict(seed_doc) if seed_doc else {}
        pin = PinRecord.from_dict(seed_doc["pin"]) if seed_doc.get("pin") is not None else None
        docs = [self.tokens_codec.decode(v, eid, who) for v in user.tokens]
        tokens = tuple(Token.from_dict(d) for d in docs if not is_app_record(d))
        apps = tuple(AppPassword.from_dict(d) for d in docs if is_app_record(d))
        app_key = b64d(seed_doc["ak"], "seed.ak") if seed_doc.get("ak") is not None else b""
        placeholder = bool(user.used) and all(v == INITIAL_USED for v in user.used)
        used = UsedState() if placeholder else self._decode_used(user)
        ids = {t.id for t in tokens}
        if len({a.id for a in apps} | ids) != len(apps) + len(ids):
            raise TamperedState(f"{who}: two stored records share an id; refusing them")
        app_ids = {a.id for a in apps}
        if set(used.apps) - app_ids:
            if len(user.used) < 2:
                raise TamperedState(f"{who}: use state of app passwords not stored; refusing it")
            # Two values merged (a revocation raced with a login on another provider): the
            # last use of a revoked app password is dropped, not taken as tampering.
            used = dataclasses.replace(
                used, apps={k: v for k, v in used.apps.items() if k in app_ids}
            )
        if placeholder and (tokens or apps or user.seed is not None):
            raise TamperedState(
                f"{who}: the use state was reset to its first value while tokens are stored "
                "(written outside otpgate); refusing it (an admin can `otpgate reset` the user)"
            )
        if set(used.tokens) - ids or set(used.suspensions) - ids:
            raise TamperedState(f"{who}: use state of tokens that are not stored; refusing it")
        if with_secrets:
            needs_secret = {t.id for t in tokens if t.type is not TokenType.SCRATCH}
            if set(secret_map) != needs_secret:
                raise TamperedState(
                    f"{who}: the stored secrets do not match the stored tokens; refusing them"
                )
            if not consistent(pin, used.pin):
                # A seed written back from before the PIN was set or changed (or a use
                # state from another time): the two must belong together.
                raise TamperedState(
                    f"{who}: the PIN in the seed does not match the use state's; refusing them"
                )
            if apps and len(app_key) != APP_KEY_BYTES:
                raise TamperedState(
                    f"{who}: app passwords are stored without their key; refusing them"
                )
            state = OtpState(tokens, secret_map, used, pin, apps, app_key)
            object.__setattr__(user, "decoded", state)  # a memo on an immutable entry
            return state
        return OtpState(tokens=tokens, secrets=secret_map, used=used, apps=apps)

    def _decode_used(self, user: UserEntry) -> UsedState:
        states = [
            UsedState.from_dict(self.used_codec.decode(v, user.entry_id, user.dn))
            for v in user.used
            if v != INITIAL_USED
        ]
        if not states:
            return UsedState()
        # Several values (a multi-valued attribute written outside otpgate, or two writers
        # merged by replication): keep the most advanced state of each token, every spent
        # scratch code and a low-scratch warning claim of either, so nothing can move
        # backwards; the next write repairs it.
        merged = states[0]
        for state in states[1:]:
            for tid, use in state.tokens.items():
                mine = merged.use_of(tid)
                # On a tie, the value without an outstanding code wins: a code withdrawn
                # or replaced on one server must not come back from the other.
                ahead = use if _order(use) > _order(mine) else mine
                spent = mine.scratch_used | use.scratch_used
                warned = mine.warned or use.warned  # a list's warning is never claimed twice
                merged = merged.with_use(
                    tid, dataclasses.replace(ahead, scratch_used=spent, warned=warned)
                )
            # A suspension in either value holds (fail closed), the longer one of each.
            suspensions = dict(merged.suspensions)
            for tid, held in state.suspensions.items():
                suspensions[tid] = held.longer(suspensions.get(tid))
            suspension = merged.suspension
            if state.suspension is not None:
                suspension = state.suspension.longer(suspension)
            merged = UsedState(
                merged.tokens,
                max(merged.failures, state.failures),
                max(merged.locked_until, state.locked_until),
                tuple(dict.fromkeys((*merged.accepted, *state.accepted))),
                tuple(sorted({*merged.sends, *state.sends}))[-MAX_SENDS_KEPT:],
                suspension=suspension,
                suspensions=suspensions,
                proof_failures=tuple(
                    sorted({*merged.proof_failures, *state.proof_failures})
                )[-MAX_SENDS_KEPT:],
                pin=merged.pin if merged.pin is not None else state.pin,
                apps={
                    k: max((u for u in (merged.apps.get(k), state.apps.get(k)) if u),
                           key=lambda u: u.at)
                    for k in {*merged.apps, *state.apps}
                },
                app_failures=max(merged.app_failures, state.app_failures),
                app_locked_until=max(merged.app_locked_until, state.app_locked_until),
            )
        return merged

    # -- planning writes ------------------------------------------------------------------

    def _class_changes(self, user: UserEntry) -> list[Modification]:
        aux = self.config.profile.aux_class
        if aux and aux.lower() not in user.state_classes:
            return [Modification(Modification.ADD, "objectClass", (aux.encode(),))]
        return []

    def new_state_entry(self, user: UserEntry) -> dict[str, tuple[bytes, ...]]:
        """The Add that creates a user's state entry holding the first ``used`` value."""
        return {
            "objectClass": tuple(c.encode() for c in self.config.state_classes),
            "cn": (self.state_rdn(user.entry_id).encode(),),
            self.config.used.spec.name: (INITIAL_USED,),
        }

    def initialise(self, user: UserEntry) -> list[Modification]:
        """The Modify that gives an existing holder its first ``used`` value (and class)."""
        add = Modification(Modification.ADD, self.config.used.spec.name, (INITIAL_USED,))
        return [*self._class_changes(user), add]

    def after(
        self, user: UserEntry, changes: list[Modification], state: OtpState | None = None
    ) -> UserEntry:
        """The entry as it is once ``changes`` (a plan of ours) have been applied; ``state``:
        what they hold, decoded (kept as the new entry's memo)."""
        values = {
            self.config.seed.spec.name.lower(): list(filter(None, [user.seed])),
            self.config.tokens.spec.name.lower(): list(user.tokens),
            self.config.used.spec.name.lower(): list(user.used),
        }
        classes = set(user.state_classes)
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
            state_classes=frozenset(classes),
            from_cache=False,
            decoded=state,
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
        if change.secrets is not None or change.pin is not None or change.app_key is not None:
            name = self.config.seed.spec.name
            secrets = change.secrets if change.secrets is not None else state.secrets
            pin = state.pin if change.pin is None else (change.pin if change.pin.pin else None)
            app_key = state.app_key if change.app_key is None else change.app_key
            if user.seed is not None:
                changes.append(Modification(Modification.DELETE, name, (user.seed,)))
            if secrets or pin is not None or app_key:
                doc = secrets_to_dict(secrets)
                if pin is not None:
                    doc["pin"] = pin.to_dict()
                if app_key:
                    doc["ak"] = b64e(app_key)
                raw = self.seed_codec.encode(doc, eid, who)
                changes.append(Modification(Modification.ADD, name, (raw,)))
        if change.tokens is not None or change.apps is not None:
            # Tokens and app passwords are values of one attribute: rewritten together.
            name = self.config.tokens.spec.name
            tokens = change.tokens if change.tokens is not None else state.tokens
            apps = change.apps if change.apps is not None else state.apps
            if user.tokens:
                changes.append(Modification(Modification.DELETE, name, user.tokens))
            docs = [t.to_dict() for t in tokens] + [a.to_dict() for a in apps]
            if docs:
                raws = tuple(self.tokens_codec.encode(d, eid, who) for d in docs)
                changes.append(Modification(Modification.ADD, name, raws))
        return changes
