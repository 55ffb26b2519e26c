"""The token inventory: hardware tokens imported but not yet assigned (pure mapping).

Each token is one entry ``cn=<serial>,<inventory_dn>`` (AD and stock OpenLDAP:
organizationalRole; otpgate schema: device + otpgateInventory) whose mapped
inventory attribute holds the token and its secret, encrypted and bound to
that entry's own GUID/UUID.  The directory stays the one source of truth.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from otpgate import ber
from otpgate.codec import AttributeCodec, Purpose
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.engine import Add, Delete, Modify, Search, Step
from otpgate.directory.ldapdata import (
    ENTRY_ALREADY_EXISTS,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT,
    SCOPE_BASE,
    SCOPE_SUBTREE,
    SUCCESS,
    Modification,
    SearchEntry,
)
from otpgate.directory.records import CAS_CONFLICTS, Lookup
from otpgate.directory.state import ANY_ENTRY
from otpgate.errors import InventoryError
from otpgate.tokens import Secret, Token
from otpgate.vault import Keyring

SERIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def check_serial(serial: str) -> str:
    if not SERIAL.fullmatch(serial):  # fullmatch: "$" would accept a trailing newline
        raise InventoryError(
            f"serial {serial!r}: use 1-64 characters of A-Z a-z 0-9 . _ : - (starting alphanumeric)"
        )
    return serial


@dataclass(frozen=True)
class InventoryItem:
    serial: str
    dn: str
    entry_id: bytes
    raw: bytes | None
    """The stored value; None for an entry whose token is being assigned right now."""
    token: Token | None = None
    secret: Secret | None = field(default=None, repr=False)
    last: int = -1
    """Last used HOTP counter when the token was imported (-1: a fresh token)."""


class InventoryMapper:
    def __init__(self, config: DirectoryConfig, keyring: Keyring) -> None:
        if not config.inventory_dn:
            raise InventoryError("[directory].inventory_dn is not set: there is no inventory")
        self.config = config
        self.container = config.inventory_dn
        self.codec = AttributeCodec(
            config.inventory.spec, config.inventory.format, Purpose.INVENTORY, keyring
        )
        self.attributes = (config.profile.id_attribute, config.inventory.spec.name, "cn")

    def dn(self, serial: str) -> str:
        return f"cn={check_serial(serial)},{self.container}"

    def new_entry(self, serial: str) -> dict[str, tuple[bytes, ...]]:
        return {
            "objectClass": tuple(c.encode() for c in self.config.profile.inventory_classes),
            "cn": (check_serial(serial).encode(),),
        }

    def encode(
        self, item_dn: str, entry_id: bytes, token: Token, secret: Secret, last: int = -1
    ) -> bytes:
        doc = {"v": 1, "token": token.to_dict(), "secret": secret.to_dict()}
        if last >= 0:
            doc["last"] = last
        return self.codec.encode(doc, entry_id, item_dn)

    # -- planned Modify operations (the same for every driver) ---------------------------

    def store_change(self, raw: bytes) -> list[Modification]:
        """Put a value in (a new entry's first value, or a claimed one given back)."""
        return [Modification(Modification.ADD, self.config.inventory.spec.name, (raw,))]

    def claim_change(self, item: InventoryItem) -> list[Modification]:
        """Delete the exact stored value: of two claims of one serial, one gets 16."""
        if item.raw is None:
            raise InventoryError(f"serial {item.serial} is being assigned by someone else")
        return [Modification(Modification.DELETE, self.config.inventory.spec.name, (item.raw,))]

    def replace_change(self, item: InventoryItem, raw: bytes) -> list[Modification]:
        """Swap the exact stored value for ``raw`` (compare-and-swap)."""
        return [*self.claim_change(item), *self.store_change(raw)]

    def item(self, found: SearchEntry, decrypt: bool = True) -> InventoryItem:
        entry_id = found.first(self.config.profile.id_attribute)
        cn = found.first("cn")
        if not entry_id or not cn:
            raise InventoryError(f"{found.dn}: not an inventory entry (no id or cn)")
        raw = found.first(self.config.inventory.spec.name)
        item = InventoryItem(cn.decode("utf-8", "replace"), found.dn, entry_id, raw)
        if raw is None or not decrypt:
            return item
        doc = self.codec.decode(raw, entry_id, found.dn)
        token = Token.from_dict(doc["token"])
        last = doc.get("last", -1)
        return InventoryItem(
            item.serial,
            found.dn,
            entry_id,
            raw,
            token,
            Secret.from_dict(doc["secret"]),
            last if isinstance(last, int) and not isinstance(last, bool) else -1,
        )


# -- the inventory operations, once, as engine steps (run by store.py and sync.py) ---------


def read_item(mapper: InventoryMapper, serial: str, decrypt: bool = True) -> Step[InventoryItem]:
    found: list[SearchEntry] = yield Search(
        Lookup(mapper.dn(serial), SCOPE_BASE, ANY_ENTRY, user_filter=False), mapper.attributes
    )
    if not found:
        raise InventoryError(f"serial {serial} is not in the inventory")
    return mapper.item(found[0], decrypt)


def entries(mapper: InventoryMapper) -> Step[list[SearchEntry]]:
    """Every inventory entry (not the container), sorted by serial."""
    found: list[SearchEntry] = yield Search(
        Lookup(mapper.container, SCOPE_SUBTREE, ANY_ENTRY, user_filter=False), mapper.attributes
    )
    container = mapper.container.lower()
    return sorted(
        (e for e in found if e.dn.lower() != container),
        key=lambda e: (e.first("cn") or b"").lower(),
    )


def read_entries(mapper: InventoryMapper, serials: Sequence[str]) -> Step[list[SearchEntry]]:
    """The entries of ``serials`` that are there, in one search (a page of the portal's
    list: only the rows shown are read, and decrypted by the caller)."""
    names = [check_serial(s) for s in serials]
    if not names:
        return []
    text = "(|" + "".join(f"(cn={n})" for n in names) + ")"  # serials need no escaping
    wire = ber.filter_or(*(ber.filter_equal(b"cn", n.encode()) for n in names))
    lookup = Lookup(mapper.container, SCOPE_SUBTREE, text, user_filter=False, filter_ber=wire)
    found: list[SearchEntry] = yield Search(lookup, mapper.attributes)
    container = mapper.container.lower()
    return [e for e in found if e.dn.lower() != container]


def list_items(mapper: InventoryMapper, decrypt: bool = True) -> Step[list[InventoryItem]]:
    return [mapper.item(e, decrypt) for e in (yield from entries(mapper))]


def reserve(mapper: InventoryMapper, serial: str) -> Step[str]:
    """Create ``cn=<serial>`` without a token: taken for whoever fills it (``fill``); nobody
    can claim an empty entry.  Its DN; InventoryError if the serial is already there."""
    dn = mapper.dn(serial)
    code, message = yield Add(dn, mapper.new_entry(serial))
    if code == ENTRY_ALREADY_EXISTS:
        raise InventoryError(f"serial {serial} is already in the inventory", code)
    if code != SUCCESS:
        raise InventoryError(f"cannot add {dn}: {code} {message}", code)
    return dn


def fill(mapper: InventoryMapper, token: Token, secret: Secret, last: int = -1) -> Step[None]:
    """Store the token in its reserved entry (bound to that entry's own id)."""
    item = yield from read_item(mapper, token.serial, decrypt=False)
    raw = mapper.encode(item.dn, item.entry_id, token, secret, last)
    code, message = yield Modify(item.dn, tuple(mapper.store_change(raw)))
    if code != SUCCESS:
        raise InventoryError(f"cannot store token {token.serial}: {code} {message}", code)


def add_item(
    mapper: InventoryMapper, token: Token, secret: Secret, last: int = -1
) -> Step[InventoryItem]:
    """Create ``cn=<serial>`` and store the token in it (bound to the new entry's id)."""
    if not token.serial:
        raise InventoryError("an inventory token needs a serial")
    dn = yield from reserve(mapper, token.serial)
    try:
        yield from fill(mapper, token, secret, last)
    except Exception:
        yield Delete(dn)  # leave no empty entry behind
        raise
    return (yield from read_item(mapper, token.serial))


def claim(mapper: InventoryMapper, serial: str, retries: int = 3) -> Step[InventoryItem]:
    """Take a token out of the inventory, exactly once.

    One Modify deletes the stored value's exact bytes: of two admins claiming the same
    serial, the second gets noSuchAttribute.  A value rewritten meanwhile (a rename, a
    rekey) is read again and claimed, up to ``retries`` times; an entry found empty was
    claimed by someone else.  Follow with ``delete`` once the token is stored elsewhere, or
    ``release`` to put it back.
    """
    for _attempt in range(retries):
        item = yield from read_item(mapper, serial)
        if item.raw is None:
            raise InventoryError(f"serial {serial} was just taken by someone else")
        code, message = yield Modify(item.dn, tuple(mapper.claim_change(item)))
        if code == SUCCESS:
            return item
        if code != NO_SUCH_ATTRIBUTE:
            raise InventoryError(f"cannot claim {serial}: {code} {message}", code)
    raise InventoryError(f"serial {serial} changed under us {retries} times; try again")


def release(mapper: InventoryMapper, item: InventoryItem) -> Step[None]:
    if item.raw is None:
        return
    code, message = yield Modify(item.dn, tuple(mapper.store_change(item.raw)))
    if code != SUCCESS:
        raise InventoryError(f"cannot return {item.serial} to the inventory: {message}", code)


Rewrite = Callable[[InventoryItem], "tuple[Token, Secret, int] | None"]
"""What to store instead of a freshly read item: (token, secret, last); None leaves it."""


def rewrite(
    mapper: InventoryMapper, serial: str, change: Rewrite, retries: int = 3
) -> Step[InventoryItem | None]:
    """Rewrite the stored token (new label, current key) with compare-and-swap: the item
    is read, ``change`` decides, and the Modify deletes the exact value read; if somebody
    changed it meanwhile it is read again and ``change`` asked again, up to ``retries``
    times.  None when ``change`` left it as it is."""
    for _attempt in range(retries):
        item = yield from read_item(mapper, serial)
        wanted = change(item) if item.raw is not None else None
        if wanted is None:
            return None
        token, secret, last = wanted
        raw = mapper.encode(item.dn, item.entry_id, token, secret, last)
        code, message = yield Modify(item.dn, tuple(mapper.replace_change(item, raw)))
        if code == SUCCESS:
            return item
        if code not in CAS_CONFLICTS:
            raise InventoryError(f"cannot rewrite {item.serial}: {code} {message}", code)
    raise InventoryError(f"serial {serial} changed under us {retries} times; try again")


def delete(mapper: InventoryMapper, serial: str) -> Step[None]:
    code, message = yield Delete(mapper.dn(serial))
    if code == NO_SUCH_OBJECT:
        raise InventoryError(f"serial {serial} is not in the inventory", code)
    if code != SUCCESS:
        raise InventoryError(f"cannot delete {serial}: {code} {message}", code)
