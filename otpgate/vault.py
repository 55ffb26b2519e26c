"""Seed vault: AES-256-GCM encryption bound to the entry, attribute and purpose.

A keyring file names its keys and says which one is current.  Every
ciphertext carries its key id, so a new key can become current while values
written under older keys still decrypt; they are re-encrypted on their next
write (or all at once by ``otpgate rekey``).

The associated data binds each value to the directory entry's immutable id
(AD objectGUID / OpenLDAP entryUUID), the LDAP attribute and the purpose
(seed, token, used, inventory): a value copied to another user or attribute
does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hmac
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from otpgate.errors import VaultError

ENVELOPE_VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_BINARY_MAGIC = b"\xa1"  # first byte of the binary envelope (version 1)


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise VaultError("not base64url") from exc


def check_key_id(kid: str) -> str:
    if not _KID.fullmatch(kid):
        raise VaultError(f"key id {kid!r} must be 1-32 characters of A-Z a-z 0-9 _ -")
    return kid


@dataclass(frozen=True)
class Binding:
    """What a ciphertext is bound to."""

    entry_id: bytes
    """The entry's immutable id: objectGUID bytes (AD) or entryUUID text as bytes."""

    attribute: str
    """The LDAP attribute the value lives in (compared case-insensitively)."""

    purpose: str
    """seed | token | used | inventory."""

    def associated_data(self, kid: str) -> bytes:
        return b"|".join(
            (
                ENVELOPE_VERSION.encode(),
                kid.encode(),
                self.entry_id,
                self.attribute.lower().encode(),
                self.purpose.encode(),
            )
        )


class Keyring:
    """Named AES-256 keys, one of them current."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        for kid, key in keys.items():
            check_key_id(kid)
            if len(key) != KEY_BYTES:
                raise VaultError(f"key {kid!r} must be {KEY_BYTES} bytes, not {len(key)}")
        if current not in keys:
            raise VaultError(f"current key {current!r} is not in the keyring")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self.current = current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    # -- text envelope: v1.<kid>.<nonce>.<ciphertext>, all base64url -------------

    def encrypt(self, plaintext: bytes, binding: Binding) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.current].encrypt(
            nonce, plaintext, binding.associated_data(self.current)
        )
        return ".".join((ENVELOPE_VERSION, self.current, _b64e(nonce), _b64e(sealed)))

    def decrypt(self, envelope: str, binding: Binding) -> bytes:
        parts = envelope.split(".")
        if len(parts) != 4 or parts[0] != ENVELOPE_VERSION:
            raise VaultError("not an otpgate v1 encrypted value")
        _, kid, nonce, sealed = parts
        return self._open(kid, _b64d(nonce), _b64d(sealed), binding)

    # -- binary envelope: A1 | len(kid) | kid | nonce | ciphertext -------------

    def encrypt_binary(self, plaintext: bytes, binding: Binding) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        kid = self.current.encode()
        sealed = self._keys[self.current].encrypt(
            nonce, plaintext, binding.associated_data(self.current)
        )
        return _BINARY_MAGIC + bytes([len(kid)]) + kid + nonce + sealed

    def decrypt_binary(self, envelope: bytes, binding: Binding) -> bytes:
        if len(envelope) < 2 or envelope[:1] != _BINARY_MAGIC:
            raise VaultError("not an otpgate v1 binary encrypted value")
        end = 2 + envelope[1]
        kid = envelope[2:end].decode("ascii", "replace")
        return self._open(
            kid, envelope[end : end + NONCE_BYTES], envelope[end + NONCE_BYTES :], binding
        )

    def key_id_of(self, envelope: str | bytes) -> str:
        """The key id a stored value was encrypted with (for rekeying)."""
        if isinstance(envelope, bytes):
            if len(envelope) < 2 or envelope[:1] != _BINARY_MAGIC:
                raise VaultError("not an otpgate v1 binary encrypted value")
            return envelope[2 : 2 + envelope[1]].decode("ascii", "replace")
        parts = envelope.split(".")
        if len(parts) != 4 or parts[0] != ENVELOPE_VERSION:
            raise VaultError("not an otpgate v1 encrypted value")
        return parts[1]

    def _open(self, kid: str, nonce: bytes, sealed: bytes, binding: Binding) -> bytes:
        aead = self._keys.get(kid)
        if aead is None:
            raise VaultError(f"value was encrypted with key {kid!r}, which is not in the keyring")
        if len(nonce) != NONCE_BYTES:
            raise VaultError("bad nonce length")
        try:
            return aead.decrypt(nonce, sealed, binding.associated_data(kid))
        except InvalidTag as exc:
            raise VaultError(
                "value does not decrypt: altered, or copied from another entry or attribute"
            ) from exc

    # -- the keyring file -------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read a keyring file; refuse one that group or others can read."""
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise VaultError(f"keyring {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise VaultError(
                f"keyring {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        try:
            doc = json.loads(path.read_text("utf-8"))
            keys = {str(kid): _b64d(str(key)) for kid, key in doc["keys"].items()}
            current = str(doc["current"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VaultError(
                f'keyring {path} is not a keyring file ({{"current": ID, "keys": {{ID: KEY}}}})'
            ) from exc
        return cls(keys, current)


@contextmanager
def keyring_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of the keyring file ``path``.

    The lock is ``flock`` on ``<keyring>.lock`` beside it (the keyring itself is replaced by
    a rename on every write, so it cannot carry the lock).  ``keygen``, ``keygen
    --make-current`` and ``rekey --retire`` take it; gateways only read the keyring.
    """
    lock_path = path.with_name(path.name + ".lock")
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError as exc:
        raise VaultError(f"cannot open the keyring lock {lock_path}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VaultError(f"keyring lock {lock_path} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _create_exclusive(tmp: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(tmp, flags, 0o600)
    except FileExistsError:
        pass
    # A stale temporary file: a writer died between creating and renaming it (callers hold
    # keyring_lock, so nobody is writing it now).  unlink removes the name itself, never
    # what a symlink planted there points to; then create it afresh, exclusively.
    with suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        return os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise VaultError(f"cannot create {tmp} exclusively: {exc.strerror}") from exc


def write_keyring(path: Path, keys: Mapping[str, bytes], current: str) -> None:
    """Replace the keyring file atomically (temporary file, fsync, rename).

    Hold :func:`keyring_lock` around the read that produced ``keys`` and this write.
    The temporary file is created exclusively (O_EXCL | O_NOFOLLOW, mode 0600): a file or
    symlink planted under its name is never written through.
    """
    Keyring(keys, current)  # validates
    doc = {"current": current, "keys": {kid: _b64e(key) for kid, key in keys.items()}}
    data = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    fd = _create_exclusive(tmp)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def read_raw_keys(path: Path) -> tuple[dict[str, bytes], str]:
    try:
        doc = json.loads(path.read_text("utf-8"))
        return {str(k): _b64d(str(v)) for k, v in doc["keys"].items()}, str(doc["current"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VaultError(
            f'keyring {path} is not a keyring file ({{"current": ID, "keys": {{ID: KEY}}}})'
        ) from exc


def same_keys(a: Mapping[str, bytes], b: Mapping[str, bytes]) -> bool:
    """Whether two keyrings hold the same key ids with the same key bytes."""
    if set(a) != set(b):
        return False
    return all(hmac.compare_digest(a[kid], b[kid]) for kid in sorted(a))


def generate_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def keygen(path: Path, kid: str, *, make_current: bool = True) -> None:
    """Create a keyring at ``path`` or add a new key ``kid`` to an existing one."""
    check_key_id(kid)
    with keyring_lock(path):
        if path.exists():
            Keyring.load(path)  # refuses an unsafe or broken file
            keys, current = read_raw_keys(path)
            if kid in keys:
                raise VaultError(f"keyring {path} already has a key {kid!r}")
        else:
            keys, current = {}, kid
        keys[kid] = generate_key()
        write_keyring(path, keys, kid if make_current else current)


def make_current(path: Path, kid: str) -> str:
    """Make the key ``kid`` (added earlier with ``--not-current``) the current key of the
    keyring file ``path``; returns the key that was current before."""
    check_key_id(kid)
    with keyring_lock(path):
        Keyring.load(path)  # refuses an unsafe or broken file
        keys, current = read_raw_keys(path)
        if kid not in keys:
            raise VaultError(f"keyring {path} has no key {kid!r} (it has {sorted(keys)})")
        if kid != current:
            write_keyring(path, keys, kid)
        return current
