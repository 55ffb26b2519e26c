"""``otpgate doctor``: reading AD security descriptors (pure).

The DACL of a user entry tells who may read or write otpgate's attributes there without
having to be every user: only needed for the opt-in layout that keeps the state in the
users' own entries (``allow_self_writable_state``).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from otpgate.admin.doctor import AdAttributeSchema, Check, Status

SID_AUTHENTICATED_USERS = "S-1-5-11"
SID_EVERYONE = "S-1-1-0"
SID_SELF = "S-1-5-10"
SID_PRE_WINDOWS_2000 = "S-1-5-32-554"
"""Pre-Windows 2000 Compatible Access: contains Authenticated Users by default."""
RIGHT_READ_PROPERTY = 0x10
RIGHT_WRITE_PROPERTY = 0x20
GENERIC_ALL = 0x10000000
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
INHERIT_ONLY = 0x08
_ALLOW = (0x00, 0x05)
_DENY = (0x01, 0x06)
_OBJECT = (0x05, 0x06)
USER_CLASS = uuid.UUID("bf967aba-0de6-11d0-a285-00aa003049e2")
INET_ORG_PERSON_CLASS = uuid.UUID("4828cc14-1437-45bc-9b07-ad6f015e5f28")


@dataclass(frozen=True)
class Ace:
    type: int
    flags: int
    mask: int
    sid: str
    object_type: uuid.UUID | None
    inherited_object_type: uuid.UUID | None

    @property
    def allow(self) -> bool:
        return self.type in _ALLOW


def sid_text(data: bytes) -> str:
    if len(data) < 8:
        raise ValueError("SID too short")
    revision, count = data[0], data[1]
    if len(data) < 8 + 4 * count:
        raise ValueError("SID truncated")
    authority = int.from_bytes(data[2:8], "big")
    subs = struct.unpack_from(f"<{count}I", data, 8)
    return "-".join(["S", str(revision), str(authority), *map(str, subs)])


def parse_dacl(descriptor: bytes) -> list[Ace]:
    """The ACEs of a self-relative SECURITY_DESCRIPTOR's DACL, in order ([MS-DTYP] 2.4.6)."""
    if len(descriptor) < 20:
        raise ValueError("security descriptor too short")
    dacl_offset = struct.unpack_from("<I", descriptor, 16)[0]
    if not dacl_offset:
        return []
    _rev, _sbz, _size, count = struct.unpack_from("<BBHH", descriptor, dacl_offset)
    pos = dacl_offset + 8
    aces = []
    for _ in range(count):
        ace_type, flags, size = struct.unpack_from("<BBH", descriptor, pos)
        if size < 8 or pos + size > len(descriptor):
            raise ValueError("ACE runs past the descriptor")
        body = descriptor[pos + 4 : pos + size]
        mask = struct.unpack_from("<I", body, 0)[0]
        object_type = inherited = None
        offset = 4
        if ace_type in _OBJECT:
            present = struct.unpack_from("<I", body, 4)[0]
            offset = 8
            if present & 1:
                object_type = uuid.UUID(bytes_le=body[offset : offset + 16])
                offset += 16
            if present & 2:
                inherited = uuid.UUID(bytes_le=body[offset : offset + 16])
                offset += 16
        if ace_type in (*_ALLOW, *_DENY):
            aces.append(Ace(ace_type, flags, mask, sid_text(body[offset:]), object_type, inherited))
        pos += size
    return aces


def _grants(mask: int, right: int) -> bool:
    if mask & GENERIC_ALL:
        return True
    if right == RIGHT_READ_PROPERTY and mask & GENERIC_READ:
        return True
    if right == RIGHT_WRITE_PROPERTY and mask & GENERIC_WRITE:
        return True
    return bool(mask & right)


def effective_right(
    aces: Sequence[Ace],
    sids: set[str],
    right: int,
    attribute: uuid.UUID,
    property_set: uuid.UUID | None,
    classes: tuple[uuid.UUID, ...] = (USER_CLASS, INET_ORG_PERSON_CLASS),
) -> bool:
    """Whether a token holding ``sids`` gets ``right`` on the attribute: the first ACE that
    decides it wins (AD keeps DACLs in canonical order: explicit deny, explicit allow,
    inherited deny, inherited allow)."""
    for ace in aces:
        if ace.flags & INHERIT_ONLY or ace.sid not in sids or not _grants(ace.mask, right):
            continue
        if ace.inherited_object_type is not None and ace.inherited_object_type not in classes:
            continue
        if ace.object_type is not None and ace.object_type not in (attribute, property_set):
            continue
        return ace.allow
    return False


def ad_acl_checks(
    aces: Sequence[Ace],
    attributes: Sequence[tuple[str, AdAttributeSchema]],
    entry: str,
    domain_sid: str | None,
    service_sid: str | None,
) -> list[Check]:
    """Who may read/write otpgate's attributes on ``entry``, from its DACL."""
    everyone = {SID_EVERYONE, SID_AUTHENTICATED_USERS, SID_PRE_WINDOWS_2000}
    if domain_sid:
        everyone.add(f"{domain_sid}-513")  # Domain Users
    fix = (
        "run schema/ad/apply-acl.sh for the users' OU and the service account's SID "
        "(schema/ad/README.md §4-5); AD cannot make these attributes confidential"
    )
    checks = []
    for name, schema in attributes:
        if schema.schema_id is None:
            continue
        area = f"AD ACL {name} on {entry}"
        read = effective_right(
            aces, everyone, RIGHT_READ_PROPERTY, schema.schema_id, schema.property_set
        )
        write_self = effective_right(
            aces, everyone | {SID_SELF}, RIGHT_WRITE_PROPERTY, schema.schema_id, schema.property_set
        )
        if read:
            checks.append(
                Check(area, Status.FAIL, "readable by all Authenticated Users (exposed)", fix)
            )
        else:
            checks.append(Check(area, Status.OK, "not readable by Authenticated Users"))
        if write_self:
            checks.append(
                Check(
                    area,
                    Status.FAIL,
                    "the user can write it (SELF): counter rollback possible",
                    fix,
                )
            )
        else:
            checks.append(Check(area, Status.OK, "the user cannot write it"))
        if service_sid is not None:
            svc = everyone | {service_sid}
            if not effective_right(
                aces, svc, RIGHT_WRITE_PROPERTY, schema.schema_id, schema.property_set
            ):
                checks.append(
                    Check(
                        area,
                        Status.WARN,
                        "no ACE lets the service account write it (unless it is an administrator)",
                        fix,
                    )
                )
    return checks
