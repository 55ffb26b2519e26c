"""The one state engine: reading a user's OTP state and changing it with compare-and-swap.

Written once and without I/O.  Each operation is a generator (a ``Step``) that yields
directory requests (``Search``, ``Modify``, ``Add``, ``Delete``) and is sent their results;
two thin drivers run them with the one loop of ``drive.py``: ``store.py`` over the gateway's
async client, ``sync.py`` over ldap3 for the CLI.  A driver delivers an I/O error into the
step with ``throw`` (so a step can undo what it did), and returns the step's return value.

The compare-and-swap loop (``update``): read, let ``change`` decide on the decoded state,
write one Modify that deletes the exact old ``used`` value, on a conflict re-read and try
again (bounded); a lost connection during the write propagates as DirectoryUnavailable:
the outcome is unknown and the caller treats the code as spent.  See ``state.py`` for
where the values live and why the write is a compare-and-swap.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from otpgate import ber
from otpgate.directory.ldapdata import SCOPE_BASE, SUCCESS, Modification, SearchEntry
from otpgate.directory.records import (
    CAS_CONFLICTS,
    ENTRY_EXISTS,
    Lookup,
    OtpState,
    StateChange,
    UserEntry,
)
from otpgate.directory.state import ANY_ENTRY, StateMapper, escape_filter_value
from otpgate.dn import normalise_dn
from otpgate.errors import CodecError, ConcurrentUpdate, DirectoryError, WriteRefused

T = TypeVar("T")


@dataclass(frozen=True)
class Search:
    """Answered with ``list[SearchEntry]`` (``[]`` for noSuchObject)."""

    lookup: Lookup
    attributes: tuple[str, ...]
    size_limit: int = 0


@dataclass(frozen=True)
class Modify:
    """One Modify, applied atomically by the server; answered with (code, message)."""

    dn: str
    changes: tuple[Modification, ...]


@dataclass(frozen=True)
class Add:
    """Answered with (code, message)."""

    dn: str
    attributes: dict[str, tuple[bytes, ...]]


@dataclass(frozen=True)
class Delete:
    """Answered with (code, message)."""

    dn: str


Op = Search | Modify | Add | Delete
Step = Generator[Op, Any, T]


@dataclass(frozen=True)
class Outcome:
    """What ``update`` did: the change's result and the entry as it now is."""

    result: Any
    user: UserEntry
    reread: bool
    """The entry was read from the directory during the update (cache: a fresh read)."""
    conflicts: int


# -- reading --------------------------------------------------------------------------------


def read_state(mapper: StateMapper, user: UserEntry) -> Step[UserEntry]:
    """``user`` with its values: in the container layout, read from its state entry."""
    if mapper.container is None:
        return user
    found: list[SearchEntry] = yield Search(mapper.state_lookup(user), mapper.state_attributes)
    return mapper.with_state(user, found)


def resolve(mapper: StateMapper, name: str) -> Step[UserEntry]:
    """The one entry ``name`` (DN, UPN, DOMAIN\\user or bare name) refers to, with its state."""
    found: list[SearchEntry] = yield Search(mapper.lookup(name), mapper.user_attributes, 2)
    return (yield from read_state(mapper, mapper.one_entry(name, found)))


def resolve_member(
    mapper: StateMapper,
    name: str,
    groups: tuple[str, ...],
    known: dict[str, bytes],
    cautious: frozenset[str] = frozenset(),
) -> Step[UserEntry]:
    """``resolve``, then the user's membership in ``groups`` (``memberships``)."""
    user = yield from resolve(mapper, name)
    return (yield from memberships(mapper, user, groups, known, cautious))


def reread(mapper: StateMapper, user: UserEntry) -> Step[UserEntry]:
    """The same entry (same immutable id) read again, with its state."""
    found: list[SearchEntry] = yield Search(mapper.reread_lookup(user), mapper.user_attributes, 2)
    return (yield from read_state(mapper, mapper.same_entry(user, found)))


def reread_state(mapper: StateMapper, user: UserEntry) -> Step[UserEntry]:
    """What a compare-and-swap retry needs again: only the values (the state entry, or the
    user entry where the values live in it)."""
    if mapper.container is None:
        return (yield from reread(mapper, user))
    return (yield from read_state(mapper, user))


def memberships(
    mapper: StateMapper,
    user: UserEntry,
    groups: tuple[str, ...],
    known: dict[str, bytes],
    cautious: frozenset[str] = frozenset(),
) -> Step[UserEntry]:
    """``user`` with the configured ``groups`` it belongs to added to its ``memberOf`` values.

    ``memberOf`` alone misses members on OpenLDAP without the memberof overlay, nested
    groups and AD's primary group, and a policy that reads "not in a group that needs an
    OTP" from a membership it cannot see fails open.  So: on AD the user's ``tokenGroups``
    (every group, nested and primary, as SIDs) against the groups' ``objectSid``; elsewhere
    each group's ``member``/``uniqueMember`` values.  Where a membership cannot be read (a
    group that is gone, a ``tokenGroups`` the account may not read), the user counts as a
    member of the ``cautious`` groups (lower case: those whose membership *adds* a
    requirement, such as an OTP) and of no other; all of them are listed in
    ``unknown_groups``, for rules that must not take either answer (a channel's
    allow and deny groups refuse such a user).  ``known`` caches what does not change:
    group SIDs (AD), groups seen to exist (OpenLDAP)."""
    if not groups:
        return user
    answers: dict[str, bool | None] = {}
    if mapper.config.profile.server == "ad":
        found: list[SearchEntry] = yield Search(
            Lookup(user.dn, SCOPE_BASE, ANY_ENTRY, user_filter=False), ("tokenGroups",)
        )
        token_groups = set(found[0].attributes.get("tokengroups", [])) if found else set()
        for group in groups:  # an empty tokenGroups: unreadable (every account has a group)
            sid = yield from _group_fact(group, "objectSid", known)
            answers[group] = None if sid is None or not token_groups else sid in token_groups
    else:
        dn = user.dn.encode()
        text_dn = escape_filter_value(user.dn)
        is_member = Lookup(
            "",
            SCOPE_BASE,
            f"(|(member={text_dn})(uniqueMember={text_dn}))",
            user_filter=False,
            filter_ber=ber.filter_or(
                ber.filter_equal(b"member", dn), ber.filter_equal(b"uniqueMember", dn)
            ),
        )
        for group in groups:
            if (yield from _group_fact(group, "objectClass", known)) is None:
                answers[group] = None
                continue
            found = yield Search(replace(is_member, base=group), ("objectClass",))
            answers[group] = bool(found)
    member = [
        g
        for g, answer in answers.items()
        if answer or (answer is None and g.lower() in cautious)
    ]
    unknown = tuple(g for g, answer in answers.items() if answer is None)
    # The entry's own memberOf values count only for groups that add a requirement: where
    # a site's schema and rules let users write memberOf, a value she wrote herself must
    # not grant anything (an exemption, a grace, a listener's allow rule).
    asked = {normalise_dn(g) for g in groups if g.lower() not in cautious}
    kept = tuple(g for g in user.groups if normalise_dn(g) not in asked)
    return replace(user, groups=(*kept, *member), unknown_groups=unknown)


def _group_fact(group: str, attribute: str, known: dict[str, bytes]) -> Step[bytes | None]:
    """A group's ``attribute`` (its SID, or just proof that it exists); None if it cannot
    be read.  Found values are kept in ``known``; failures are asked again next time."""
    cached = known.get(group.lower())
    if cached is not None:
        return cached
    try:
        found: list[SearchEntry] = yield Search(
            Lookup(group, SCOPE_BASE, ANY_ENTRY, user_filter=False), (attribute,)
        )
    except DirectoryError as exc:
        if exc.result_code is None:  # the directory could not be asked at all
            raise
        return None
    value = found[0].first(attribute) if found else None
    if value:
        known[group.lower()] = value
    return value


# -- the compare-and-swap loop ----------------------------------------------------------------


def update(
    mapper: StateMapper,
    user: UserEntry,
    change: Callable[[OtpState], StateChange[T]],
    retries: int,
    *,
    unreadable_as_empty: bool = False,
) -> Step[Outcome]:
    """Apply ``change`` to the user's current state with compare-and-swap, retrying races.

    ``change`` sees the freshly decoded state and returns what to write (and a result);
    it may be called several times.  A decision that writes nothing is made on a fresh
    read, never on an entry from the gateway's cache (no compare-and-swap checks it).
    ``unreadable_as_empty``: a state that does not decode (tampered, foreign values) is
    handed to ``change`` as empty, so that an admin's reset can overwrite it.
    """
    fresh = not user.from_cache
    reread_any = False
    conflicts = 0
    for _attempt in range(retries):
        if not user.used:
            if mapper.container is not None and not user.state_exists:
                code, message = yield Add(user.state_dn, mapper.new_state_entry(user))
                lost_race = code == ENTRY_EXISTS
            else:
                code, message = yield Modify(user.state_dn, tuple(mapper.initialise(user)))
                lost_race = code in CAS_CONFLICTS
            if code != SUCCESS and not lost_race:
                raise WriteRefused(
                    f"{user.dn}: cannot initialise OTP state at {user.state_dn}: {code} {message}",
                    code,
                )
            user = yield from reread_state(mapper, user)
            fresh = reread_any = True
            continue
        try:
            state = mapper.decode(user)
        except CodecError:
            if not unreadable_as_empty:
                raise
            state = OtpState()
        planned = change(state)
        if not planned.writes:
            if fresh:
                return Outcome(planned.result, user, reread_any, conflicts)
            user = yield from reread_state(mapper, user)
            fresh = reread_any = True
            continue
        changes = mapper.plan(user, state, planned)
        code, message = yield Modify(user.state_dn, tuple(changes))
        if code == SUCCESS:
            pin = state.pin if planned.pin is None else (planned.pin if planned.pin.pin else None)
            written = OtpState(
                tokens=state.tokens if planned.tokens is None else planned.tokens,
                secrets=state.secrets if planned.secrets is None else planned.secrets,
                used=state.used if planned.used is None else planned.used,
                pin=pin,
                apps=state.apps if planned.apps is None else planned.apps,
                app_key=state.app_key if planned.app_key is None else planned.app_key,
            )
            after = mapper.after(user, changes, written)
            return Outcome(planned.result, after, reread_any, conflicts)
        if code not in CAS_CONFLICTS:
            raise WriteRefused(f"{user.dn}: write refused: {code} {message}", code)
        conflicts += 1
        user = yield from reread_state(mapper, user)
        fresh = reread_any = True
    raise ConcurrentUpdate(
        f"{user.dn}: OTP state changed under us {retries} times; giving up", conflicts
    )
