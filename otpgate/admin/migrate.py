"""Moving users' state from their own entries into the state container (``state_dn``).

Setting ``[directory] state_dn`` on a directory where the state was kept in the users' own
entries leaves every enrolled user's values behind; the gateway refuses such users
(``StateNotMigrated``) rather than read them as never enrolled.  ``migrate_user`` moves one
user, as a state-engine step: the values are copied verbatim (they are bound to the user's
entry id and the attribute name, which stay the same), the state entry is created with
them, then exactly those values are deleted from the user's entry.  Safe to run again:
a user whose state entry exists keeps it, and only the leftovers are removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otpgate.directory import engine
from otpgate.directory.engine import Add, Modify, Step
from otpgate.directory.ldapdata import NO_SUCH_ATTRIBUTE, SUCCESS, Modification, SearchEntry
from otpgate.directory.records import ENTRY_EXISTS
from otpgate.directory.state import StateMapper
from otpgate.errors import WriteRefused

MIGRATED, KEPT, NOTHING = "migrated", "state entry kept, leftovers removed", "nothing to move"


def migrate_user(mapper: StateMapper, found: SearchEntry, dry_run: bool = False) -> Step[str]:
    """Move the otpgate values of the user entry ``found`` (read with
    ``mapper.user_attributes``) into its state entry; what was done."""
    if mapper.container is None:
        raise ValueError("[directory].state_dn is not set: there is nowhere to migrate to")
    own = mapper.own_values(found)
    if not own:
        return NOTHING
    user = yield from engine.read_state(mapper, mapper.entry(found))
    outcome = KEPT if user.state_exists and user.has_values else MIGRATED
    if dry_run:
        return outcome
    if outcome == MIGRATED:
        created = mapper.new_state_entry(user)
        attributes = {**created, **{name: tuple(values) for name, values in own.items()}}
        if user.state_exists:  # an empty state entry (created, never written): fill it
            adds = tuple(
                Modification(Modification.ADD, name, tuple(values)) for name, values in own.items()
            )
            code, message = yield Modify(user.state_dn, adds)
        else:
            code, message = yield Add(user.state_dn, attributes)
            if code == ENTRY_EXISTS:
                outcome, code = KEPT, SUCCESS  # migrated meanwhile by someone else
        if code != SUCCESS:
            raise WriteRefused(f"{user.dn}: cannot create {user.state_dn}: {code} {message}", code)
    removals = tuple(
        Modification(Modification.DELETE, name, tuple(values)) for name, values in own.items()
    )
    code, message = yield Modify(user.dn, removals)
    if code not in (SUCCESS, NO_SUCH_ATTRIBUTE):
        raise WriteRefused(f"{user.dn}: cannot remove the old values: {code} {message}", code)
    return outcome


@dataclass
class MigrationReport:
    scanned: int = 0
    done: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "scanned": self.scanned,
            "outcomes": dict(sorted(self.done.items())),
            "failed": [{"dn": dn, "error": err} for dn, err in self.failed],
        }
