"""Attribute codecs: turn a stored thing into an LDAP attribute value and back.

Formats:

* ``json-encrypted`` (default): compact JSON sealed by the vault, written as
  the ASCII envelope ``v1.<kid>.<nonce>.<ciphertext>`` (base64url);
* ``binary``: the same AES-GCM envelope as raw bytes (about a quarter
  smaller); only for octet-string attributes such as AD registeredAddress.

There is no plain format: every AD user may write their own postalAddress,
registeredAddress and wWWHomePage by default, so a value otpgate did not encrypt
and authenticate (bound to the entry, the attribute and the purpose) could have
been written by anyone with the user's password.  Decoding refuses anything but
an envelope; the one plain value the state layer knows, the first-writer
placeholder of ``used``, never reaches this module.

Values are made valid for the target syntax (RFC 4517 Postal Address escapes
``\\`` and ``$``) and checked against the attribute's size limit before
anything is written.  Decoding recognises both formats, so changing the
configured format takes effect on each value's next write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from otpgate.errors import CodecError, VaultError
from otpgate.vault import Binding, Keyring


class Format(StrEnum):
    JSON_ENCRYPTED = "json-encrypted"
    BINARY = "binary"


PLAIN_REFUSED = (
    "plain 'json' is not allowed: seeds are always encrypted, and so are tokens, use state "
    "and inventory, because anyone who can write the attribute (on AD by default the user, "
    "with a phished password) could forge them; use 'json-encrypted' or 'binary'"
)


class Syntax(StrEnum):
    UNICODE = "unicode"
    """AD 2.5.5.12 Unicode string (size limit counted in characters)."""
    OCTET = "octet"
    """AD 2.5.5.10 / RFC 4517 Octet String."""
    POSTAL = "postal"
    """RFC 4517 §3.3.28 Postal Address: lines split by $, escapes \\24 and \\5C."""
    DIRECTORY = "directory"
    """RFC 4517 Directory String (UTF-8)."""


class Purpose(StrEnum):
    SEED = "seed"
    TOKEN = "token"  # noqa: S105 (a purpose name, not a password)
    USED = "used"
    INVENTORY = "inventory"


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    syntax: Syntax
    max_size: int | None
    """Largest value the directory accepts, in characters (text) or bytes (octet)."""


def postal_escape(text: str) -> str:
    return text.replace("\\", "\\5C").replace("$", "\\24")


def postal_unescape(text: str) -> str:
    if "\\" not in text and "$" not in text:
        return text  # the common case: base64url envelopes never need escaping
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            hexpair = text[i + 1 : i + 3]
            if len(hexpair) != 2 or hexpair.upper() not in ("5C", "24"):
                raise ValueError(f"bad Postal Address escape {text[i : i + 3]!r}")
            out.append("\\" if hexpair.upper() == "5C" else "$")
            i += 3
        elif ch == "$":
            raise ValueError("unescaped $ (a Postal Address line break) in an otpgate value")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _to_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


def _from_json(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def check_format(spec: AttributeSpec, fmt: Format, purpose: Purpose) -> None:
    """Refuse a format the attribute's syntax or the stored thing does not allow."""
    if fmt is Format.BINARY and spec.syntax is not Syntax.OCTET:
        raise CodecError(
            f"'binary' needs an octet-string attribute; {spec.name} is {spec.syntax.value}"
        )


class AttributeCodec:
    """Encodes and decodes one stored thing in one attribute."""

    def __init__(self, spec: AttributeSpec, fmt: Format, purpose: Purpose, keyring: Keyring):
        check_format(spec, fmt, purpose)
        self.spec = spec
        self.format = fmt
        self.purpose = purpose
        self.keyring = keyring

    def binding(self, entry_id: bytes) -> Binding:
        return Binding(entry_id=entry_id, attribute=self.spec.name, purpose=self.purpose.value)

    def encode(self, doc: Mapping[str, Any], entry_id: bytes, user: str) -> bytes:
        """The attribute value for ``doc``; raises CodecError if it would not fit."""
        payload = _to_json(doc)
        raw: bytes
        if self.format is Format.BINARY:
            raw = self.keyring.encrypt_binary(payload, self.binding(entry_id))
        else:
            text = self.keyring.encrypt(payload, self.binding(entry_id))
            if self.spec.syntax is Syntax.POSTAL:
                text = postal_escape(text)
            raw = text.encode("utf-8")
        # Every encoded value is ASCII or raw bytes, so characters == bytes here.
        if self.spec.max_size is not None and len(raw) > self.spec.max_size:
            raise CodecError(
                f"{user}: the {self.purpose.value} value for {self.spec.name} would be "
                f"{len(raw)} {'bytes' if self.spec.syntax is Syntax.OCTET else 'characters'}, "
                f"above the attribute's limit of {self.spec.max_size}; nothing was written "
                "(remove a token, or map this to an attribute that holds more)"
            )
        return raw

    def decode(self, raw: bytes, entry_id: bytes, user: str) -> dict[str, Any]:
        """The document in an authenticated envelope; CodecError for anything else."""
        try:
            if raw[:1] == b"\xa1":
                payload = self.keyring.decrypt_binary(raw, self.binding(entry_id))
            else:
                text = raw.decode("utf-8")
                if self.spec.syntax is Syntax.POSTAL:
                    text = postal_unescape(text)
                if not text.startswith("v1."):
                    raise CodecError(
                        f"{user}: {self.spec.name} holds a value otpgate did not encrypt "
                        f"({self.purpose.value}); refusing it"
                    )
                payload = self.keyring.decrypt(text, self.binding(entry_id))
            return _from_json(payload)
        except CodecError:
            raise
        except (VaultError, ValueError, UnicodeError) as exc:
            raise CodecError(f"{user}: {self.spec.name} ({self.purpose.value}): {exc}") from exc

    def is_envelope(self, raw: bytes) -> bool:
        """Whether ``raw`` has the shape of an otpgate envelope (not whether it decrypts)."""
        try:
            return self.key_id_of(raw) is not None
        except ValueError:
            return False

    def key_id_of(self, raw: bytes) -> str | None:
        """The key a stored value is encrypted with; None for anything that is no envelope."""
        if raw[:1] == b"\xa1":
            return self.keyring.key_id_of(raw)
        text = raw.decode("utf-8", "replace")
        if self.spec.syntax is Syntax.POSTAL:
            text = postal_unescape(text)
        return self.keyring.key_id_of(text) if text.startswith("v1.") else None
