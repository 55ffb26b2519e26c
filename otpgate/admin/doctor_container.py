"""``otpgate doctor`` for the state container (``[directory] state_dn``): probe and judge.

With a state container the user's own entry holds no OTP state, so what matters is that
the service account can create, write, read and delete entries below ``state_dn`` and
that an ordinary user can do none of the writing.  The probe creates one entry
``cn=otpgate-doctor-probe-<random>`` (the state classes, a probe ``used`` value),
modifies it with a compare-and-swap like a login does, reads it back and deletes it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from otpgate.admin.doctor import Check, Status
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.ldapdata import SCOPE_BASE, SUCCESS, Modification
from otpgate.directory.sync import SyncConnection
from otpgate.errors import DirectoryError

INSUFFICIENT_ACCESS = 50
DELEGATION_FIX = (
    "delegate to the service account on {dn}: create and delete child objects of class "
    "{cls} and write all properties of descendant {cls} objects (AD: dsacls / samba-tool "
    "dsacl, see schema/ad/README.md; OpenLDAP: schema/acl-openldap.conf, state container)"
)


def _probe_attrs(d: DirectoryConfig, cn: str, value: bytes) -> dict[str, tuple[bytes, ...]]:
    return {
        "objectClass": tuple(c.encode() for c in d.state_classes),
        "cn": (cn.encode(),),
        d.used.spec.name: (value,),
    }


def container_checks(
    d: DirectoryConfig,
    conn: SyncConnection,
    open_user: Callable[[], SyncConnection] | None,
    user: str | None,
) -> list[Check]:
    """Checks of the state container; ``open_user`` binds as the test user (or None)."""
    state_dn = d.state_dn or ""
    structural = next((c for c in d.state_classes if c.lower() != "top"), "organizationalRole")
    fix = DELEGATION_FIX.format(dn=state_dn, cls=structural)
    if not conn.search(state_dn, "(objectClass=*)", ["objectClass"], scope=SCOPE_BASE):
        return [
            Check(
                "state container",
                Status.FAIL,
                f"{state_dn} does not exist or the service account cannot read it",
                f"create it (an organizationalUnit); then {fix}",
            )
        ]
    checks = [Check("state container", Status.OK, f"{state_dn} exists")]
    cn = f"otpgate-doctor-probe-{secrets.token_hex(6)}"
    probe_dn = f"cn={cn},{state_dn}"
    first, second = b"otpgate-doctor-probe-1", b"otpgate-doctor-probe-2"
    code, message = conn.add(probe_dn, _probe_attrs(d, cn, first))
    if code != SUCCESS:
        checks.append(
            Check(
                "service account creates state entries",
                Status.FAIL,
                f"refused: {code} {message}",
                fix,
            )
        )
        return checks
    checks.append(Check("service account creates state entries", Status.OK, f"added {probe_dn}"))
    try:
        name = d.used.spec.name
        swap = [
            Modification(Modification.DELETE, name, (first,)),
            Modification(Modification.ADD, name, (second,)),
        ]
        code, message = conn.modify(probe_dn, swap)
        checks.append(
            Check("service account writes state entries", Status.OK, "compare-and-swap works")
            if code == SUCCESS
            else Check(
                "service account writes state entries",
                Status.FAIL,
                f"refused: {code} {message}",
                fix,
            )
        )
        found = conn.search(probe_dn, "(objectClass=*)", [name], scope=SCOPE_BASE)
        back = found[0].attributes.get(name.lower(), []) if found else []
        checks.append(
            Check("service account reads state entries", Status.OK, "values come back")
            if back
            else Check(
                "service account reads state entries",
                Status.FAIL,
                "the probe value does not come back",
                fix,
            )
        )
        if open_user is None or user is None:
            checks.append(
                Check(
                    "ordinary user and the state container",
                    Status.SKIP,
                    "give --test-user NAME (and its password) to check that users cannot "
                    "write there",
                )
            )
        else:
            checks += _user_checks(d, open_user, user, probe_dn)
    finally:
        code, message = conn.delete(probe_dn)
        if code != SUCCESS:
            checks.append(
                Check(
                    "probe cleanup",
                    Status.FAIL,
                    f"could not delete {probe_dn}: {code} {message}",
                    "delete it by hand; and let the service account delete state entries",
                )
            )
    return checks


def _user_checks(
    d: DirectoryConfig, open_user: Callable[[], SyncConnection], user: str, probe_dn: str
) -> list[Check]:
    try:
        conn = open_user()
    except DirectoryError as exc:
        return [Check("ordinary user access", Status.FAIL, f"cannot bind as {user}: {exc}")]
    fix = (
        "users must not write below state_dn: remove any grant to them (or to a group of "
        "theirs) on that container"
    )
    checks = []
    try:
        name = d.used.spec.name
        code, _ = conn.modify(
            probe_dn, [Modification(Modification.REPLACE, name, (b"otpgate-doctor-user",))]
        )
        checks.append(
            Check("user writes state entries", Status.OK, f"refused ({code})")
            if code != SUCCESS
            else Check(
                "user writes state entries",
                Status.FAIL,
                f"{user} could change another user's OTP state (roll it back, replay codes)",
                fix,
            )
        )
        cn = f"otpgate-doctor-user-{secrets.token_hex(6)}"
        code, _ = conn.add(f"cn={cn},{d.state_dn}", _probe_attrs(d, cn, b"x"))
        if code == SUCCESS:
            conn.delete(f"cn={cn},{d.state_dn}")
        checks.append(
            Check("user creates state entries", Status.OK, f"refused ({code})")
            if code != SUCCESS
            else Check(
                "user creates state entries",
                Status.FAIL,
                f"{user} can create entries below {d.state_dn} (plant a state for a user "
                "who has none)",
                fix,
            )
        )
        found = conn.search(probe_dn, "(objectClass=*)", [name], scope=SCOPE_BASE)
        readable = bool(found and found[0].attributes.get(name.lower()))
        checks.append(
            Check(
                "user reads state entries",
                Status.WARN,
                f"{user} can read the state entries (AES-GCM ciphertext only; AD's default "
                "for organizationalRole objects)",
                "optional: deny Authenticated Users read on the container's objects",
            )
            if readable
            else Check("user reads state entries", Status.OK, f"{user} cannot read them")
        )
    finally:
        conn.close()
    return checks
