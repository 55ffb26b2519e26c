"""An in-memory directory for unit tests of the pipeline and the state engine.

It answers the state engine's requests (``Search``/``Modify``/``Add``/``Delete``) with the
LDAP semantics otpgate relies on: a Modify is atomic, deleting a value that is not there
is noSuchAttribute (16), adding one that is there is attributeOrValueExists (20), adding
an entry that exists is entryAlreadyExists (68).  ``MemoryStore`` is the gateway's
``OtpStore`` (entry cache included) with its I/O edge replaced by this directory, so the
pipeline runs unchanged, in milliseconds, on ``twisted.internet.task.Clock``.

Only for tests: the integration tests run the same code against slapd and Samba.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from otpgate.config import Config, membership_groups
from otpgate.directory.engine import Add, Delete, Modify, Op, Search
from otpgate.directory.ldapdata import Modification, SearchEntry
from otpgate.directory.store import OtpStore
from otpgate.errors import DirectoryUnavailable
from otpgate.vault import Keyring

SUCCESS, NO_SUCH_ATTRIBUTE, VALUE_EXISTS, NO_SUCH_OBJECT, ENTRY_EXISTS = 0, 16, 20, 32, 68


@dataclass
class MemoryDirectory:
    entries: dict[str, tuple[str, dict[str, list[bytes]]]] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    down: bool = False
    operations: list[str] = field(default_factory=list)
    cutting: bool = False
    cut: Any = None
    """A predicate on each operation: True cuts the connection before it is answered (the
    write may or may not have happened: here it has not)."""

    def add_user(
        self, uid: str, password: str, base: str = "ou=people,dc=x", **attributes: Any
    ) -> str:
        dn = f"uid={uid},{base}"
        attrs: dict[str, list[bytes]] = {
            "objectclass": [b"inetOrgPerson"],
            "uid": [uid.encode()],
            "entryuuid": [f"00000000-0000-4000-8000-{len(self.entries):012d}".encode()],
            "mail": [f"{uid}@x".encode()],
        }
        for name, values in attributes.items():
            attrs[name.lower()] = [v.encode() if isinstance(v, str) else v for v in values]
        self.entries[dn.lower()] = (dn, attrs)
        self.passwords[dn.lower()] = password
        return dn

    def add_group(self, dn: str, members: list[str]) -> str:
        self.entries[dn.lower()] = (
            dn,
            {"objectclass": [b"groupOfNames"], "member": [m.encode() for m in members]},
        )
        return dn

    # -- what a directory does ---------------------------------------------------------------

    def perform(self, op: Op) -> Any:
        if self.down:
            raise DirectoryUnavailable("the in-memory directory is down")
        if self.cut is not None and self.cut(op):
            raise DirectoryUnavailable("connection lost (cut by the test)")
        self.operations.append(type(op).__name__)
        if isinstance(op, Search):
            return self.search(op)
        if isinstance(op, Modify):
            return self.modify(op.dn, op.changes)
        if isinstance(op, Add):
            if op.dn.lower() in self.entries:
                return ENTRY_EXISTS, "exists"
            attrs = {k.lower(): list(v) for k, v in op.attributes.items()}
            attrs.setdefault("entryuuid", [str(uuid.uuid4()).encode()])  # as slapd assigns
            self.entries[op.dn.lower()] = (op.dn, attrs)
            return SUCCESS, ""
        if isinstance(op, Delete):
            return (SUCCESS, "") if self.entries.pop(op.dn.lower(), None) else (NO_SUCH_OBJECT, "")
        raise TypeError(op)

    def search(self, op: Search) -> list[SearchEntry]:
        lookup = op.lookup
        wanted = {a.lower() for a in op.attributes}
        found = []
        for key, (dn, attrs) in self.entries.items():
            if lookup.scope == 0:
                if key != lookup.base.lower():
                    continue
            elif not key.endswith("," + lookup.base.lower()):
                continue
            if lookup.user_filter and b"inetOrgPerson" not in attrs.get("objectclass", []):
                continue
            if lookup.filter_ber is not None and not _is_member(lookup.filter, attrs):
                continue
            if lookup.attribute is not None:
                values = attrs.get(lookup.attribute.lower(), [])
                if lookup.value.lower().encode() not in [v.lower() for v in values]:
                    continue
            found.append(SearchEntry(dn, {k: list(v) for k, v in attrs.items() if k in wanted}))
        return found

    def modify(self, dn: str, changes: tuple[Modification, ...]) -> tuple[int, str]:
        entry = self.entries.get(dn.lower())
        if entry is None:
            return NO_SUCH_OBJECT, "no such object"
        attrs = {k: list(v) for k, v in entry[1].items()}  # atomic: work on a copy
        for change in changes:
            name = change.attribute.lower()
            current = attrs.setdefault(name, [])
            for value in change.values:
                if change.op == Modification.DELETE:
                    if value not in current:
                        return NO_SUCH_ATTRIBUTE, "no such value"
                    current.remove(value)
                elif change.op == Modification.ADD:
                    if value in current:
                        return VALUE_EXISTS, "value exists"
                    current.append(value)
            if change.op == Modification.REPLACE:
                attrs[name] = list(change.values)
        self.entries[dn.lower()] = (entry[0], {k: v for k, v in attrs.items() if v})
        return SUCCESS, ""

    async def check_password(self, dn: str, password: bytes) -> tuple[int, str]:
        if self.down:
            raise DirectoryUnavailable("the in-memory directory is down")
        ok = password and self.passwords.get(dn.lower()) == password.decode()
        return (SUCCESS, "") if ok else (49, "invalid credentials")


def _is_member(text: str, attrs: dict[str, list[bytes]]) -> bool:
    """The one encoded filter the engine sends: (|(member=DN)(uniqueMember=DN))."""
    dn = text.split("(member=", 1)[1].split(")(uniqueMember=", 1)[0]
    dn = re.sub(r"\\([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), dn).lower()
    values = attrs.get("member", []) + attrs.get("uniquemember", [])
    return dn in [v.decode().lower() for v in values]


class _NoPool:
    stats: Any

    def __init__(self) -> None:
        from otpgate.stats import DirectoryStats

        self.stats = DirectoryStats()

    async def connection(self) -> None:
        return None


class MemoryStore(OtpStore):
    """The gateway's store, its I/O edge replaced by a MemoryDirectory."""

    def __init__(self, config: Config, keyring: Keyring, directory: MemoryDirectory, clock: Any):
        pool: Any = _NoPool()
        groups, cautious = membership_groups(config)
        super().__init__(
            config.directory, keyring, pool, pool, clock, groups, cautious,
            attributes=config.radius.reply_attributes,
        )
        self.directory = directory

    async def _perform(self, conn: Any, op: Op) -> Any:
        return self.directory.perform(op)
