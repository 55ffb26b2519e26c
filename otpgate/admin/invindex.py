"""The portal's in-memory index of inventory tokens and of the hardware tokens users hold
(pure: no I/O; ``otpgate.web.invlive`` keeps it up to date from the directory).

Why an index: the type and label of a token are inside its encrypted value, so a page sorted
by them, or the number of matches of a search, needs them for every token.  Reading and
decrypting 100,000 entries costs seconds (1.1 s of the gateway's CPU to read only their
names, 24 µs to decrypt each: docs/DECISIONS.md, "Inventory pages"), far too much for one
page.  So every entry is decoded once, when it is first read or after it changed, into a
``Row`` (serial, type, label, no secret), and each sort order is a list kept sorted as rows
come and go.  A page is then a slice; the rows shown are read again and decrypted by the
page itself, so what a page shows is never older than the page.

What changed is found by each entry's fingerprint (a hash of its raw values: only an entry
whose values changed is decoded again) and by the directory's change stamps
(``Watermark``: entryCSN on OpenLDAP, uSNChanged on AD), so a refresh reads only what
changed since the last one.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from otpgate.admin.inventory import HARDWARE
from otpgate.apppass import is_app_record
from otpgate.directory.inventory import SERIAL, InventoryMapper
from otpgate.directory.ldapdata import SearchEntry
from otpgate.directory.state import StateMapper
from otpgate.dn import same_dn
from otpgate.errors import CodecError, DirectoryError, VaultError
from otpgate.importers import key_fingerprint
from otpgate.tokens import Token

SORTS = ("serial", "type", "label")
AVAILABLE, BEING_ASSIGNED, UNREADABLE, ASSIGNED = (
    "available",
    "being assigned",
    "unreadable",
    "assigned",
)
_UNREADABLE = (CodecError, DirectoryError, VaultError, ValueError, KeyError, TypeError)


@dataclass(frozen=True, slots=True)
class Row:
    serial: str
    kind: str
    """The token type ("hotp", "totp", "yubico"); "" when unknown."""
    label: str
    created: int
    state: str
    holder: str = ""
    """Assigned tokens: the entry holding the user's state (the user's DN, or the state
    entry's in the container layout); "" for the inventory."""
    token_id: str = ""
    key: bytes = field(default=b"", repr=False)
    """The key's fingerprint (``importers.key_fingerprint``) of an inventory token: what
    an import is checked against (two tokens with one key accept each code twice)."""


def _uid(entry: str, row: Row) -> str:
    return f"{entry}\0{row.token_id}"


def _sort_key(row: Row, sort: str) -> tuple[str, ...]:
    serial = row.serial.lower()
    if sort == "type":
        return (row.kind, serial)
    if sort == "label":
        return (row.label.lower(), serial)
    return (serial,)


class RowIndex:
    """Rows by directory entry, with one list per sort order kept sorted as entries come,
    change and go (``bisect``: a change costs a few µs at 100,000 rows).  Rows that arrive
    in bulk (the first read) are sorted in once, when a page is next asked for."""

    BULK = 64
    """More new rows than this are appended and sorted at once, not inserted one by one (an
    insertion moves half the list: 100,000 of them took seconds)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[bytes, tuple[Row, ...]]] = {}
        self._rows: dict[str, Row] = {}
        self._hay: dict[str, str] = {}
        """What a search looks in: serial and label, lower-cased once."""
        self._sorted: dict[str, list[tuple[str, ...]]] = {s: [] for s in SORTS}
        self._pending: dict[str, list[tuple[str, ...]]] = {s: [] for s in SORTS}
        self._by_serial: dict[str, set[str]] = {}

    def _flush(self) -> None:
        for sort, pending in self._pending.items():
            if not pending:
                continue
            ordered = self._sorted[sort]
            if len(pending) <= self.BULK:
                for key in pending:
                    insort(ordered, key)
            else:
                ordered.extend(pending)
                ordered.sort()
            pending.clear()

    def __len__(self) -> int:
        return len(self._rows)

    def fingerprint(self, entry: str) -> bytes | None:
        held = self._entries.get(entry.lower())
        return held[0] if held is not None else None

    def entries(self) -> set[str]:
        return set(self._entries)

    def put(self, entry: str, fingerprint: bytes, rows: Sequence[Row]) -> None:
        """The rows of ``entry`` now (replacing what it held)."""
        key = entry.lower()
        self.drop(key)
        self._entries[key] = (fingerprint, tuple(rows))
        for row in rows:
            uid = _uid(key, row)
            self._rows[uid] = row
            self._hay[uid] = f"{row.serial}\0{row.label}".lower()
            for sort, pending in self._pending.items():
                pending.append((*_sort_key(row, sort), uid))
            self._by_serial.setdefault(row.serial.lower(), set()).add(uid)

    def drop(self, entry: str) -> None:
        key = entry.lower()
        held = self._entries.pop(key, None)
        if held is None:
            return
        self._flush()
        for row in held[1]:
            uid = _uid(key, row)
            del self._rows[uid]
            del self._hay[uid]
            for sort, ordered in self._sorted.items():
                wanted = (*_sort_key(row, sort), uid)
                at = bisect_left(ordered, wanted)
                if at < len(ordered) and ordered[at] == wanted:
                    del ordered[at]
            uids = self._by_serial.get(row.serial.lower())
            if uids is not None:
                uids.discard(uid)
                if not uids:
                    del self._by_serial[row.serial.lower()]

    def drop_serial(self, serial: str) -> None:
        """Forget the entries holding ``serial`` (one, in the inventory)."""
        for uid in list(self._by_serial.get(serial.lower(), ())):
            self.drop(uid.split("\0", 1)[0])

    def keep_only(self, entries: Iterable[str]) -> None:
        """Forget every entry not in ``entries`` (what a full read no longer found)."""
        seen = {e.lower() for e in entries}
        for gone in [e for e in self._entries if e not in seen]:
            self.drop(gone)

    def find(self, serial: str) -> list[Row]:
        return [self._rows[uid] for uid in sorted(self._by_serial.get(serial.lower(), ()))]

    def serials(self) -> set[str]:
        """Every serial, lower-cased (what an import's serials are checked against)."""
        return set(self._by_serial)

    def keys(self) -> dict[bytes, str]:
        """Key fingerprint -> serial, of every row that has one."""
        return {row.key: row.serial for row in self._rows.values() if row.key}

    def page(
        self, sort: str, descending: bool, query: str, offset: int, size: int
    ) -> tuple[list[Row], int]:
        """Rows ``offset`` to ``offset + size`` in ``sort`` order, of those whose serial or
        label contain ``query`` (case-insensitive; "" for all), and how many there are."""
        self._flush()
        ordered = self._sorted[sort if sort in SORTS else "serial"]
        wanted = query.lower()
        if not wanted:
            total = len(ordered)
            if descending:
                stop = max(total - offset, 0)
                chosen = ordered[max(stop - size, 0) : stop][::-1]
            else:
                chosen = ordered[offset : offset + size]
            return [self._rows[k[-1]] for k in chosen], total
        hay = self._hay
        matches = [
            key[-1]
            for key in (reversed(ordered) if descending else ordered)
            if wanted in hay[key[-1]]
        ]
        return [self._rows[uid] for uid in matches[offset : offset + size]], len(matches)


def fingerprint(values: Iterable[bytes]) -> bytes:
    """What tells an entry's relevant values apart from what they were (not a secret)."""
    digest = hashlib.blake2b(digest_size=16)
    for value in sorted(values):
        digest.update(len(value).to_bytes(4, "big") + value)
    return digest.digest()


# -- decoding entries into rows (each read once, and again only when it changed) -------------


@dataclass(frozen=True)
class Source:
    """What one index is made of: the values whose fingerprint tells whether an entry
    changed, and how an entry is decoded into rows."""

    values: Callable[[SearchEntry], list[bytes]]
    rows: Callable[[SearchEntry], tuple[Row, ...]]


def stock_source(mapper: InventoryMapper) -> Source:
    """Inventory entries: one row each, decrypted (type, label, key fingerprint)."""
    name = mapper.config.inventory.spec.name.lower()

    def values(found: SearchEntry) -> list[bytes]:
        return [*found.attributes.get(name, []), b"cn=" + (found.first("cn") or b"")]

    parents: dict[str, bool] = {}
    """Whether a DN's part after the first RDN names the container (as the server writes
    it: one string for every entry, so DNs are parsed once, not once per entry)."""

    def in_container(dn: str, serial: str) -> bool:
        rdn, _sep, parent = dn.partition(",")
        if rdn.lower() != f"cn={serial.lower()}":
            return False
        if parent not in parents:
            if len(parents) > 64:
                parents.clear()
            parents[parent] = same_dn(parent, mapper.container)
        return parents[parent]

    def rows(found: SearchEntry) -> tuple[Row, ...]:
        serial = (found.first("cn") or b"").decode("utf-8", "replace")
        if not SERIAL.fullmatch(serial) or not in_container(found.dn, serial):
            return ()  # not an inventory entry otpgate made (a sub-container, a stray entry)
        try:
            item = mapper.item(found)
        except _UNREADABLE:
            return (Row(serial, "", "", 0, UNREADABLE),)
        token = item.token
        if token is None or item.secret is None:
            return (Row(serial, "", "", 0, BEING_ASSIGNED),)
        key = key_fingerprint(item.secret)
        return (
            Row(serial, token.type.value, token.label, token.created, AVAILABLE, "", token.id, key),
        )

    return Source(values, rows)


def assigned_source(mapper: StateMapper) -> Source:
    """Users' states: a row per hardware token with a serial, from the token records alone
    (the seed is never read).  In the container layout an entry is a state entry, whose cn
    names the user's entry id."""
    codec = mapper.tokens_codec
    name = codec.spec.name.lower()

    def values(found: SearchEntry) -> list[bytes]:
        return list(found.attributes.get(name, []))

    def rows(found: SearchEntry) -> tuple[Row, ...]:
        try:
            if mapper.container is not None:
                entry_id = mapper.entry_id_of_rdn((found.first("cn") or b"").decode("ascii"))
            else:
                entry_id = found.first(mapper.config.profile.id_attribute) or b""
            docs = [
                codec.decode(v, entry_id, found.dn)
                for v in found.attributes.get(name, [])
                if codec.is_envelope(v)
            ]
            tokens = [Token.from_dict(d) for d in docs if not is_app_record(d)]
        except (*_UNREADABLE, UnicodeDecodeError):
            return ()  # `otpgate show` and the help desk report such a user
        return tuple(
            Row(t.serial, t.type.value, t.label, t.created, ASSIGNED, found.dn, t.id)
            for t in tokens
            if t.serial and t.type in HARDWARE
        )

    return Source(values, rows)


# -- where the next refresh starts ------------------------------------------------------------

MARGIN_SECONDS = 5.0
"""How far back in time a delta read reaches: a write's stamp is taken when it starts,
milliseconds before it commits, so a write that commits just after a read may carry a stamp
below the highest that read saw."""


class Watermark:
    """Where the next delta read starts: the highest change stamp that was already the
    highest ``MARGIN_SECONDS`` ago (by the portal's clock, not the stamps' own time).  So a
    write committed late is still found, and after a large import the reads go back to
    finding only what changed within a few seconds (a margin in stamp time would make every
    read fetch a recent import again until something newer is written).  What a delta read
    still misses (a write that raced the full read itself, one replicated in late from
    another provider) the next full read finds, and a page reads its own rows anyway."""

    def __init__(self, ad: bool, margin: float = MARGIN_SECONDS) -> None:
        self.ad = ad
        self.margin = margin
        self.high: bytes | None = None
        self._settled: deque[tuple[float, bytes]] = deque()

    def see(self, stamp: bytes | None) -> None:
        if not stamp:
            return
        if self.ad:
            try:
                value = int(stamp)
            except ValueError:
                return
            if self.high is None or value > int(self.high):
                self.high = stamp
        elif self.high is None or stamp > self.high:
            self.high = stamp

    def settle(self, now: float) -> None:
        """A read is complete at ``now``: what it saw is the highest as of then."""
        if self.high is None:
            return
        self._settled.append((now, self.high))
        while len(self._settled) > 1 and now - self._settled[1][0] >= self.margin:
            self._settled.popleft()  # the newest one old enough is all that is needed

    def since(self, now: float) -> bytes | None:
        """The lower bound of the next delta read; None: nothing seen (read everything)."""
        if not self._settled:
            return None
        ready = [high for at, high in self._settled if now - at >= self.margin]
        return ready[-1] if ready else self._settled[0][1]
