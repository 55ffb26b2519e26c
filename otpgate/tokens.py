"""What otpgate keeps per user: token records, their secrets, and use/lockout state.

Three stored things, each in one mapped attribute:

* ``seed``   (single value): the secrets of all the user's tokens, by token id;
* ``tokens`` (one value per token): type, parameters, label, serial, scratch hashes;
* ``used``   (single value): last accepted counter/step per token, drift,
  used scratch codes, the lockout state and the suspensions (of the user, of a token).

Secrets live apart from metadata so listing tokens never decrypts a seed,
and verification writes only ``used``.  Plain dataclasses with JSON-ready
``to_dict``/``from_dict``; validation errors name the field.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from otpgate.otp.oath import MAX_COUNTER, Algorithm, check_digits, check_period
from otpgate.otp.scratch import ScratchList
from otpgate.pin import PinVerifier


class TokenType(StrEnum):
    TOTP = "totp"
    HOTP = "hotp"
    YUBICO = "yubico"
    SCRATCH = "scratch"
    EMAIL = "email"
    SMS = "sms"


OUT_OF_BAND = frozenset({TokenType.EMAIL, TokenType.SMS})
"""Token types whose codes are sent to the user (``otpgate/auth/oob.py``)."""
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"{what}: not base64url") from exc


def _get(doc: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{what}.{key}: expected {kind.__name__}")
    return value


def _opt(doc: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    return None if doc.get(key) is None else _get(doc, key, kind, what)


def new_token_id() -> str:
    return secrets.token_hex(4)


UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Characters a label may not hold: C0 and C1 control characters and DEL (terminal escape
sequences such as OSC 52 or CSI start with them), line/paragraph separators and the bidi
embedding/override/isolate controls (they reorder what an admin sees)."""


def escape_unsafe(text: str) -> str:
    """``text`` with every UNSAFE_TEXT character written as ``\\xNN`` / ``\\uNNNN``."""
    return UNSAFE_TEXT.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )


def check_label(label: str) -> str:
    """Refuse a label with a control character (it would reach an admin's terminal)."""
    found = UNSAFE_TEXT.search(label)
    if found is not None:
        raise ValueError(
            f"label: character U+{ord(found[0]):04X} at position {found.start() + 1} is not "
            "allowed (no control characters, line separators or bidi controls)"
        )
    return label


@dataclass(frozen=True)
class Token:
    """One token's public description (no secret in here)."""

    id: str
    type: TokenType
    created: int
    label: str = ""
    serial: str = ""
    digits: int = 6
    algorithm: Algorithm = Algorithm.SHA1
    period: int = 30
    public_id: str = ""
    """Yubico OTP public id (modhex)."""
    scratch: ScratchList | None = None
    attribute: str = ""
    """E-mail/SMS: the attribute of the user's own entry that holds the destination (the
    address is read from it at each send, never copied here)."""
    bound: bytes = b""
    """E-mail/SMS: a digest of the destination the enrollment proof went to
    (``auth/oob.destination_binding``): a code is sent only while the attribute still holds
    it, so a user who may write her own ``mobile`` cannot redirect the codes."""
    expires: int = 0
    """Unix time from which the token's codes are refused (a temporary scratch list given
    for a lost device, ``admin/suspend.py``); 0: never."""

    def __post_init__(self) -> None:
        check_label(self.label)
        if self.expires < 0:
            raise ValueError(f"expires: {self.expires} (a Unix time, or 0 for never)")
        if self.type in (TokenType.TOTP, TokenType.HOTP):
            check_digits(self.digits)
        if self.type in OUT_OF_BAND:
            if not 6 <= self.digits <= 8:
                raise ValueError(f"digits: {self.digits} (6 to 8 for sent codes)")
            if not ATTRIBUTE_NAME.match(self.attribute):
                raise ValueError(f"attribute: {self.attribute!r} is not an attribute name")
        if self.type is TokenType.TOTP:
            check_period(self.period)
        if self.type is TokenType.SCRATCH and self.scratch is None:
            raise ValueError("a scratch token needs its scratch list")

    @property
    def code_length(self) -> int:
        """How many characters its codes have (to split password+OTP)."""
        if self.type is TokenType.YUBICO:
            return 32 + len(self.public_id)
        if self.type is TokenType.SCRATCH and self.scratch is not None:
            return self.scratch.length
        return self.digits

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "type": self.type.value, "created": self.created}
        if self.label:
            doc["label"] = self.label
        if self.serial:
            doc["serial"] = self.serial
        if self.type in (TokenType.TOTP, TokenType.HOTP):
            doc["digits"] = self.digits
            doc["algorithm"] = self.algorithm.value
        if self.type in OUT_OF_BAND:
            doc["digits"] = self.digits
            doc["attribute"] = self.attribute
            doc["bound"] = b64e(self.bound)
        if self.type is TokenType.TOTP:
            doc["period"] = self.period
        if self.public_id:
            doc["public_id"] = self.public_id
        if self.scratch is not None:
            doc["scratch"] = self.scratch.to_dict()
        if self.expires:
            doc["expires"] = self.expires
        return doc

    def shown(self) -> dict[str, Any]:
        """``to_dict`` for output (``--json``): without the destination's binding, which is
        for the sender's comparison only."""
        doc = self.to_dict()
        doc.pop("bound", None)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Token:
        what = "token"
        try:
            ttype = TokenType(_get(doc, "type", str, what))
            algorithm = Algorithm(doc.get("algorithm", "sha1"))
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from exc
        scratch_doc = doc.get("scratch")
        return cls(
            id=_get(doc, "id", str, what),
            type=ttype,
            created=_get(doc, "created", int, what),
            # A label stored before labels were checked is cleaned, not refused: refusing
            # would make the whole state undecodable (no login, no `otpgate reset`).
            label=escape_unsafe(_opt(doc, "label", str, what) or ""),
            serial=_opt(doc, "serial", str, what) or "",
            digits=_opt(doc, "digits", int, what) or 6,
            algorithm=algorithm,
            period=_opt(doc, "period", int, what) or 30,
            public_id=_opt(doc, "public_id", str, what) or "",
            scratch=None if scratch_doc is None else ScratchList.from_dict(scratch_doc),
            attribute=_opt(doc, "attribute", str, what) or "",
            bound=b64d(_opt(doc, "bound", str, what) or "", f"{what}.bound"),
            expires=_opt(doc, "expires", int, what) or 0,
        )


@dataclass(frozen=True)
class Secret:
    """A token's secret material: the OATH key or the Yubico AES key and private id."""

    key: bytes
    private_id: bytes = b""

    def __repr__(self) -> str:  # never print key material
        return "Secret(<redacted>)"

    def to_dict(self) -> dict[str, Any]:
        doc = {"k": b64e(self.key)}
        if self.private_id:
            doc["p"] = b64e(self.private_id)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Secret:
        return cls(
            key=b64d(_get(doc, "k", str, "secret"), "secret.k"),
            private_id=b64d(doc["p"], "secret.p") if "p" in doc else b"",
        )


def secrets_to_dict(secret_map: Mapping[str, Secret]) -> dict[str, Any]:
    return {"v": 1, "s": {tid: s.to_dict() for tid, s in secret_map.items()}}


def secrets_from_dict(doc: Mapping[str, Any]) -> dict[str, Secret]:
    inner = _get(doc, "s", dict, "seed")
    return {str(tid): Secret.from_dict(s) for tid, s in inner.items()}


@dataclass(frozen=True)
class TokenUse:
    """Per-token one-time-use state."""

    last: int = -1
    """Last accepted HOTP counter, TOTP step, or Yubico (use << 8 | session); -1: never."""
    drift: int = 0
    """TOTP clock drift in steps, learned from the last accepted code."""
    used_at: int = 0
    """Unix time of the last accepted code (0: never)."""
    scratch_used: frozenset[int] = frozenset()
    warned: bool = False
    """A scratch list: its low-codes warning was claimed (``[delivery] scratch_warning``),
    so no gateway sends it again for this list."""
    code: bytes = b""
    """E-mail/SMS: the keyed digest of the code last sent (``auth/oob.py``); b"": none."""
    sent: int = 0
    """E-mail/SMS: Unix time that code was sent.  It is outstanding while ``last`` differs
    (``last`` is set to ``sent`` when the code is accepted) and the code has not expired."""
    request: bytes = b""
    """E-mail/SMS: a keyed identity of the RADIUS request that caused the send, so that a
    NAS retransmitting that request to another gateway causes no second message."""
    misses: int = 0
    """E-mail/SMS: wrong codes typed while this code was outstanding; at ``MAX_MISSES`` the
    code is withdrawn (``auth/oob.py``), whatever the lockout settings."""

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"l": self.last}
        if self.drift:
            doc["d"] = self.drift
        if self.used_at:
            doc["t"] = self.used_at
        if self.scratch_used:
            doc["x"] = sorted(self.scratch_used)
        if self.warned:
            doc["w"] = True
        if self.code:
            doc["c"] = b64e(self.code)
            doc["s"] = self.sent
        if self.request:
            doc["q"] = b64e(self.request)
        if self.misses:
            doc["m"] = self.misses
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TokenUse:
        what = "used.token"
        used = doc.get("x", [])
        if not isinstance(used, list) or not all(isinstance(i, int) for i in used):
            raise ValueError(f"{what}.x: expected a list of integers")
        last = _get(doc, "l", int, what)
        if not -1 <= last <= MAX_COUNTER:
            raise ValueError(f"{what}.l: {last} is out of range (-1 to {MAX_COUNTER})")
        return cls(
            last=last,
            drift=_opt(doc, "d", int, what) or 0,
            used_at=_opt(doc, "t", int, what) or 0,
            scratch_used=frozenset(used),
            warned=_opt(doc, "w", bool, what) or False,
            code=b64d(_get(doc, "c", str, what), f"{what}.c") if "c" in doc else b"",
            sent=_opt(doc, "s", int, what) or 0,
            request=b64d(_get(doc, "q", str, what), f"{what}.q") if "q" in doc else b"",
            misses=_opt(doc, "m", int, what) or 0,
        )


MAX_ACCEPTED_REQUESTS = 4
"""Accepted RADIUS requests kept in a use state (``[radius] failover_replay_seconds``)."""
ACCEPTED_DIGEST_BYTES = 16


@dataclass(frozen=True)
class AcceptedRequest:
    """A login accepted for one exact RADIUS request: a keyed digest of (the request's
    identity, token id, code), the token and the time.  Lets another gateway answer the
    NAS's retransmission of that same request (``otpgate/auth/retransmit.py``)."""

    digest: bytes
    token: str
    at: int
    """Unix time of the accept, in milliseconds (windows are a few seconds)."""

    @property
    def seconds(self) -> float:
        return self.at / 1000

    def to_list(self) -> list[Any]:
        return [b64e(self.digest), self.token, self.at]

    @classmethod
    def from_list(cls, doc: Any) -> AcceptedRequest:
        what = "used.r"
        if not isinstance(doc, list) or len(doc) != 3:
            raise ValueError(f"{what}: expected [digest, token, time]")
        digest_text, token, at = doc
        if not isinstance(digest_text, str) or not isinstance(token, str):
            raise ValueError(f"{what}: expected text digest and token id")
        if not isinstance(at, int) or isinstance(at, bool):
            raise ValueError(f"{what}: expected an integer time")
        digest = b64d(digest_text, what)
        if len(digest) != ACCEPTED_DIGEST_BYTES:
            raise ValueError(f"{what}: digest of {len(digest)} bytes")
        return cls(digest, token, at)


@dataclass(frozen=True)
class Suspension:
    """An admin's suspension of a token or of all of a user's OTP: its codes are refused from
    ``since`` until ``until`` (0: until resumed).  Kept in the encrypted use state."""

    since: int
    until: int = 0

    def active(self, now: float) -> bool:
        return self.until == 0 or now < self.until

    def to_list(self) -> list[int]:
        return [self.since, self.until]

    def longer(self, other: Suspension | None) -> Suspension:
        """Of two suspensions, the one that lasts longer (merging two use values)."""
        if other is None or self.until == 0:
            return self
        return other if other.until == 0 or other.until > self.until else self

    @classmethod
    def from_list(cls, doc: Any, what: str) -> Suspension:
        if (
            not isinstance(doc, list)
            or len(doc) != 2
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in doc)
        ):
            raise ValueError(f"{what}: expected [since, until] (non-negative integer times)")
        return cls(doc[0], doc[1])


@dataclass(frozen=True)
class AppUse:
    """When and from where an app password was last used (``otpgate/apppass.py``), and
    where: the listener's listen string or the NAS's name."""

    at: int
    client: str = ""
    where: str = ""

    def to_list(self) -> list[Any]:
        return [self.at, self.client, self.where]

    @classmethod
    def from_list(cls, doc: Any, what: str) -> AppUse:
        if (
            not isinstance(doc, list)
            or len(doc) != 3
            or not isinstance(doc[0], int)
            or isinstance(doc[0], bool)
            or not all(isinstance(v, str) for v in doc[1:])
        ):
            raise ValueError(f"{what}: expected [time, client, where]")
        return cls(doc[0], doc[1], doc[2])


@dataclass(frozen=True)
class UsedState:
    """The one-time-use cache and lockout state of one user."""

    tokens: Mapping[str, TokenUse] = field(default_factory=dict)
    failures: int = 0
    locked_until: int = 0
    accepted: tuple[AcceptedRequest, ...] = ()
    """Recently accepted RADIUS requests (empty unless failover_replay_seconds is set)."""
    sends: tuple[int, ...] = ()
    """Unix times of the codes sent to this user by e-mail or SMS in the last hour (the
    per-user cooldown and hourly limit, shared by every gateway)."""
    suspension: Suspension | None = None
    """All of the user's OTP is suspended: no token works (``auth/suspension.py``)."""
    suspensions: Mapping[str, Suspension] = field(default_factory=dict)
    """Suspended tokens, by token id.  Beside ``tokens`` rather than in a ``TokenUse``, which
    a login replaces whole: every write of the use state keeps them."""
    proof_failures: tuple[int, ...] = ()
    """Unix times of failed proofs of possession (claiming an inventory token, resynchronising
    one) in the last day: unlike ``failures``, a successful login does not clear them, so the
    daily cap (``admin/claim.py``) bounds the guesses at a token one does not hold."""
    pin: PinVerifier | None = None
    """The user's PIN, as a keyed digest (``otpgate/pin.py``); its key and the PIN are in
    the seed.  None: no PIN set."""
    apps: Mapping[str, AppUse] = field(default_factory=dict)
    """The last use of each app password, by its id."""
    app_failures: int = 0
    """Wrong app passwords since the last right one: they lock app-password logins out
    (``app_locked_until``), never the codes."""
    app_locked_until: int = 0

    def use_of(self, token_id: str) -> TokenUse:
        return self.tokens.get(token_id, TokenUse())

    def with_use(self, token_id: str, use: TokenUse) -> UsedState:
        return replace(self, tokens={**self.tokens, token_id: use})

    def without(self, token_ids: set[str]) -> UsedState:
        return replace(
            self,
            tokens={k: v for k, v in self.tokens.items() if k not in token_ids},
            suspensions={k: v for k, v in self.suspensions.items() if k not in token_ids},
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "v": 1,
            "u": {k: v.to_dict() for k, v in sorted(self.tokens.items())},
        }
        if self.failures:
            doc["f"] = self.failures
        if self.locked_until:
            doc["lk"] = self.locked_until
        if self.accepted:
            doc["r"] = [a.to_list() for a in self.accepted]
        if self.sends:
            doc["sn"] = list(self.sends)
        if self.suspension is not None:
            doc["ss"] = self.suspension.to_list()
        if self.suspensions:
            doc["st"] = {k: v.to_list() for k, v in sorted(self.suspensions.items())}
        if self.proof_failures:
            doc["pf"] = list(self.proof_failures)
        if self.pin is not None:
            doc["pn"] = self.pin.to_dict()
        if self.apps:
            doc["ap"] = {k: v.to_list() for k, v in sorted(self.apps.items())}
        if self.app_failures:
            doc["af"] = self.app_failures
        if self.app_locked_until:
            doc["al"] = self.app_locked_until
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> UsedState:
        inner = _get(doc, "u", dict, "used")
        accepted = _opt(doc, "r", list, "used") or []
        if len(accepted) > MAX_ACCEPTED_REQUESTS:
            raise ValueError(f"used.r: {len(accepted)} entries (at most {MAX_ACCEPTED_REQUESTS})")
        return cls(
            tokens={str(k): TokenUse.from_dict(v) for k, v in inner.items()},
            failures=_opt(doc, "f", int, "used") or 0,
            locked_until=_opt(doc, "lk", int, "used") or 0,
            accepted=tuple(AcceptedRequest.from_list(a) for a in accepted),
            sends=_sends(_opt(doc, "sn", list, "used") or []),
            suspension=None if "ss" not in doc else Suspension.from_list(doc["ss"], "used.ss"),
            suspensions={
                str(k): Suspension.from_list(v, f"used.st.{k}")
                for k, v in (_opt(doc, "st", dict, "used") or {}).items()
            },
            proof_failures=_sends(_opt(doc, "pf", list, "used") or []),
            pin=PinVerifier.from_dict(doc["pn"]) if doc.get("pn") is not None else None,
            apps={
                str(k): AppUse.from_list(v, f"used.ap.{k}")
                for k, v in (_opt(doc, "ap", dict, "used") or {}).items()
            },
            app_failures=_opt(doc, "af", int, "used") or 0,
            app_locked_until=_opt(doc, "al", int, "used") or 0,
        )


MAX_SENDS_KEPT = 100
"""At most this many send times are kept (``sends_per_hour`` is at most this)."""


def _sends(doc: list[Any]) -> tuple[int, ...]:
    if len(doc) > MAX_SENDS_KEPT or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in doc
    ):
        raise ValueError(f"used.sn: expected at most {MAX_SENDS_KEPT} integer times")
    return tuple(doc)
