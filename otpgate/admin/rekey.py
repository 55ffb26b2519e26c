"""Which stored values a rekey must rewrite (pure).

A value needs rewriting when it is encrypted under a key other than the keyring's
current one, or stored in another format than the configured one (plain JSON where
encryption is configured, text envelope where binary is, ...).  Rewriting is an ordinary
compare-and-swap write of the whole state, so ``otpgate rekey`` can be interrupted and run
again at any time: values already current are skipped (that is what makes it resumable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from otpgate.codec import AttributeCodec, Format
from otpgate.directory.inventory import InventoryMapper
from otpgate.directory.state import OtpState, StateChange, StateMapper, UserEntry
from otpgate.errors import PolicyError
from otpgate.vault import VaultError, keyring_lock, read_raw_keys, same_keys, write_keyring


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
