"""``otpgate rekey``: which stored values must be rewritten (pure), the pass that rewrites
them (:func:`rekey_pass`, over a small store protocol) and retiring the old keys.

A value needs rewriting when it is encrypted under a key other than the keyring's
current one, or stored in another format than the configured one (plain JSON where
encryption is configured, text envelope where binary is, ...).  Rewriting is an ordinary
compare-and-swap write of the whole state, so ``otpgate rekey`` can be interrupted and run
again at any time: values already current are skipped (that is what makes it resumable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from otpgate.codec import AttributeCodec, Format
from otpgate.directory.inventory import InventoryItem, InventoryMapper, Rewrite
from otpgate.directory.ldapdata import SearchEntry
from otpgate.directory.records import OtpState, StateChange, UserEntry
from otpgate.directory.state import StateMapper
from otpgate.errors import CodecError, DirectoryError, PolicyError, VaultError
from otpgate.tokens import Secret, Token
from otpgate.vault import Keyring, keyring_lock, read_raw_keys, same_keys, write_keyring

if TYPE_CHECKING:
    from otpgate.admin.render import Ticker

T = TypeVar("T")


def value_is_current(codec: AttributeCodec, raw: bytes) -> bool:
    try:
        kid = codec.key_id_of(raw)
    except (VaultError, ValueError):
        return False
    binary = raw[:1] == b"\xa1"
    if kid != codec.keyring.current:
        return False
    return binary == (codec.format is Format.BINARY)


def stale_attributes(mapper: StateMapper, user: UserEntry) -> list[str]:
    """The mapped attributes of ``user`` holding a value that is not current."""
    stale = []
    if user.seed is not None and not value_is_current(mapper.seed_codec, user.seed):
        stale.append(mapper.seed_codec.spec.name)
    if any(not value_is_current(mapper.tokens_codec, v) for v in user.tokens):
        stale.append(mapper.tokens_codec.spec.name)
    if any(not value_is_current(mapper.used_codec, v) for v in user.used):
        stale.append(mapper.used_codec.spec.name)
    return stale


def key_ids_in_use(mapper: StateMapper, user: UserEntry) -> set[str]:
    kids: set[str] = set()
    pairs = [(mapper.seed_codec, user.seed)] if user.seed is not None else []
    pairs += [(mapper.tokens_codec, v) for v in user.tokens]
    pairs += [(mapper.used_codec, v) for v in user.used]
    for codec, raw in pairs:
        try:
            kid = codec.key_id_of(raw)
        except (VaultError, ValueError):
            continue
        if kid is not None:
            kids.add(kid)
    return kids


def rewrite_all(state: OtpState) -> StateChange[bool]:
    """Write every part again: the mapper encodes each with the current key and format."""
    return StateChange(True, used=state.used, tokens=state.tokens, secrets=dict(state.secrets))


def inventory_value_is_current(mapper: InventoryMapper, raw: bytes | None) -> bool:
    return raw is None or value_is_current(mapper.codec, raw)


@dataclass
class RekeyReport:
    """What a rekey pass did; ``old_keys`` are key ids still found after it."""

    scanned: int = 0
    rewritten: int = 0
    current: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    old_keys: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return not self.failed and not self.old_keys

    def to_dict(self) -> dict[str, object]:
        return {
            "scanned": self.scanned,
            "rewritten": self.rewritten,
            "already_current": self.current,
            "failed": [{"dn": dn, "error": err} for dn, err in self.failed],
            "old_keys_still_used": sorted(self.old_keys),
        }


def looks_like_otpgate(raw: bytes) -> bool:
    """Whether a value is one of otpgate's (an envelope or JSON), not, say, a real postal
    address that an AD user keeps in postalAddress."""
    if raw[:1] == b"\xa1":
        return True
    head = raw[:4].replace(b"\\5C", b"\\").replace(b"\\5c", b"\\")
    return head.startswith((b"v1.", b"{"))


def has_otpgate_values(user: UserEntry) -> bool:
    values = ([user.seed] if user.seed is not None else []) + list(user.tokens) + list(user.used)
    return any(looks_like_otpgate(v) for v in values)


class RetireRefused(PolicyError):
    """The keyring file is not the one the rekey ran with: retiring keys could destroy
    the key that the values now stored are encrypted with."""


def retire_keys(path: Path, target: str, run_keys: Mapping[str, bytes]) -> list[str]:
    """Keep only ``target`` (the key the rekey encrypted with) in the keyring file.

    ``run_keys`` are the keys the rekey run loaded.  Under the keyring lock, the file must
    still hold exactly those keys with ``target`` current: if anyone ran ``keygen`` (a new
    current key, or a staged one) or changed the current key meanwhile, nothing is removed.
    Returns the retired key ids.
    """
    with keyring_lock(path):
        keys, current = read_raw_keys(path)
        if current != target:
            raise RetireRefused(
                f"not retiring old keys: the current key of {path} is now {current!r}, but this "
                f"rekey encrypted everything with {target!r} (was a key generated or made "
                "current during the run?); nothing was removed: run `otpgate rekey --retire` again"
            )
        if not same_keys(keys, run_keys):
            raise RetireRefused(
                f"not retiring old keys: {path} changed during the rekey (keys now "
                f"{sorted(keys)}, at the start {sorted(run_keys)}); nothing was removed: run "
                "`otpgate rekey --retire` again"
            )
        retired = sorted(kid for kid in keys if kid != target)
        if retired:
            write_keyring(path, {target: keys[target]}, target)
        return retired


def keys_of_the_run(path: Path, keyring: Keyring, retire: bool) -> dict[str, bytes]:
    """The keys this run holds, as the keyring file has them.

    ``--retire`` later keeps the current key only if the file still holds exactly these
    (a keygen during a long rekey must not lose its key); with ``retire`` the file must
    hold what ``keyring`` was loaded from right now (else :class:`RetireRefused`).
    """
    run_keys, file_current = read_raw_keys(path)
    if retire and (file_current != keyring.current or set(run_keys) != set(keyring.key_ids)):
        raise RetireRefused(f"{path} changed while the rekey started; run it again")
    return run_keys


def retire_after(
    report: RekeyReport, path: Path, target: str, run_keys: Mapping[str, bytes]
) -> list[str]:
    """Retire the older keys after a pass, only if the pass left nothing under them."""
    if not report.complete:
        raise RetireRefused(
            "not retiring old keys: "
            + (
                f"{len(report.failed)} value(s) could not be rewritten"
                if report.failed
                else f"keys {sorted(report.old_keys)} are still in use"
            )
        )
    return retire_keys(path, target, run_keys)


# -- the pass ----------------------------------------------------------------------------


Users = Callable[[], Iterable[UserEntry | tuple[str, Exception]]]
"""Every user holding OTP state, or (dn, error) for one that cannot be read (a scan)."""


class RekeyStore(Protocol):
    """The user-state operations a rekey needs (``SyncStore`` in the CLI)."""

    @property
    def mapper(self) -> StateMapper: ...

    def update(
        self, user: UserEntry, change: Callable[[OtpState], StateChange[T]]
    ) -> tuple[T, UserEntry]: ...


class RekeyInventory(Protocol):
    """The inventory operations a rekey needs (``SyncInventory`` in the CLI)."""

    @property
    def mapper(self) -> InventoryMapper: ...

    def entries(self) -> Sequence[SearchEntry]: ...

    def rewrite(self, serial: str, change: Rewrite) -> InventoryItem | None: ...


def rekey_pass(
    users_with_state: Users,
    store: RekeyStore,
    inventory: RekeyInventory | None,
    current: str,
    dry_run: bool,
    progress: Callable[[int], Ticker],
) -> RekeyReport:
    """Rewrite every user state and inventory entry that is not current (``dry_run``:
    only count them), then scan again for values still under another key than
    ``current``.  ``inventory`` is None when no inventory is configured;
    ``progress(total)`` makes the progress report of the rewriting loop."""
    report = RekeyReport()
    users = list(users_with_state())
    items = inventory.entries() if inventory is not None else []
    ticker = progress(len(users) + len(items))
    for user in users:
        ticker.advance()
        if isinstance(user, tuple):
            report.failed.append((user[0], str(user[1])))
            continue
        if not has_otpgate_values(user):
            continue
        report.scanned += 1
        if not stale_attributes(store.mapper, user):
            report.current += 1
            continue
        if dry_run:
            report.rewritten += 1
            continue
        try:
            store.update(user, rewrite_all)
            report.rewritten += 1
        except (CodecError, DirectoryError) as exc:
            report.failed.append((user.dn, str(exc)))
    if inventory is not None:
        for entry in items:
            ticker.advance()
            _rekey_item(inventory, entry, dry_run, report)
    ticker.finish()
    report.old_keys |= old_keys_in_use(users_with_state, store, inventory, current)
    return report


def _rekey_item(
    inventory: RekeyInventory, entry: SearchEntry, dry_run: bool, report: RekeyReport
) -> None:
    mapper = inventory.mapper
    report.scanned += 1
    item = mapper.item(entry, decrypt=False)
    if inventory_value_is_current(mapper, item.raw):
        report.current += 1
        return
    if dry_run:
        report.rewritten += 1
        return
    def current_key(full: InventoryItem) -> tuple[Token, Secret, int] | None:
        if full.token is None or full.secret is None:
            return None  # being assigned right now
        return full.token, full.secret, full.last

    try:
        inventory.rewrite(item.serial, current_key)
        report.rewritten += 1
    except (CodecError, DirectoryError) as exc:
        report.failed.append((entry.dn, str(exc)))


def old_keys_in_use(
    users_with_state: Users, store: RekeyStore, inventory: RekeyInventory | None, current: str
) -> set[str]:
    """The key ids other than ``current`` that stored values are still encrypted with."""
    old: set[str] = set()
    for user in users_with_state():
        if not isinstance(user, tuple) and has_otpgate_values(user):
            old |= key_ids_in_use(store.mapper, user) - {current}
    if inventory is not None:
        mapper = inventory.mapper
        for entry in inventory.entries():
            raw = mapper.item(entry, decrypt=False).raw
            kid = mapper.codec.key_id_of(raw) if raw else None
            if kid is not None and kid != current:
                old.add(kid)
    return old
