"""E-mail and SMS tokens (pure): a new one, which attribute it names, and the proof that
enrolls it.

A token of type ``email`` or ``sms`` holds no destination: it names the attribute of the
user's own entry that does (``mail``; the first of ``sms_attributes`` the entry has), and
a random key of its own that keys the digests of its codes.  It becomes active only when
the code sent to that destination is typed back (``EnrollmentProof``; ``delivered`` binds
the token to the destination the code went to): the CLI, the help
desk and the self-service page all enroll through the same proof, and only then write the
token with ``sent_enroll_change`` (one compare-and-swap; a user has at most one token per
channel, a new one replaces the old).
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from otpgate.auth.oob import code_digest, new_code
from otpgate.auth.requests import Sent
from otpgate.directory.records import OtpState, StateChange
from otpgate.errors import PolicyError
from otpgate.tokens import OUT_OF_BAND, Secret, Token, TokenType, new_token_id

KEY_BYTES = 32
PROOF_ATTEMPTS = 3
"""Wrong codes typed back before an enrollment proof is void (a new send is needed)."""


def sent_kind(text: str) -> TokenType:
    kind = TokenType(text)
    if kind not in OUT_OF_BAND:
        raise ValueError(f"{text} is not an e-mail/SMS token type")
    return kind


def choose_attribute(
    kind: TokenType, mail_attribute: str, sms_attributes: Sequence[str],
    values: Mapping[str, Sequence[bytes]],
) -> str:  # fmt: skip
    """The attribute a new token names: ``mail_attribute`` for e-mail; for SMS the first of
    ``sms_attributes`` that has a value in ``values`` (attribute -> the entry's values)."""
    if kind is TokenType.EMAIL:
        return mail_attribute
    lowered = {k.lower(): v for k, v in values.items()}
    for name in sms_attributes:
        if lowered.get(name.lower()):
            return name
    raise PolicyError(f"the entry has none of {', '.join(sms_attributes)}: no number to send to")


def new_sent_token(
    kind: TokenType, attribute: str, digits: int, label: str = "", now: float | None = None
) -> tuple[Token, Secret]:
    token = Token(
        id=new_token_id(),
        type=sent_kind(kind.value),
        created=int(time.time() if now is None else now),
        label=label,
        digits=digits,
        attribute=attribute,
    )
    return token, Secret(os.urandom(KEY_BYTES))


@dataclass
class EnrollmentProof:
    """A token being enrolled and the code sent to prove its destination.  Lives only in
    the enrolling process (a CLI run, a portal session); keeps the code's digest, never
    the code."""

    token: Token
    secret: Secret = field(repr=False)
    sent: int
    expires: float
    digest: bytes = field(repr=False)
    attempts: int = 0

    @classmethod
    def start(
        cls, token: Token, secret: Secret, now: float, lifetime: int
    ) -> tuple[EnrollmentProof, str]:
        """A new proof and the code to send (the caller sends it and forgets it)."""
        code = new_code(token.digits)
        sent = int(now)
        digest = code_digest(secret.key, sent, code)
        return cls(token, secret, sent, now + lifetime, digest), code

    def check(self, code: str, now: float) -> bool:
        """Whether ``code`` is the one sent; a wrong one counts (``PROOF_ATTEMPTS``)."""
        if self.attempts >= PROOF_ATTEMPTS or now >= self.expires:
            return False
        given = code.strip()
        ok = hmac.compare_digest(code_digest(self.secret.key, self.sent, given), self.digest)
        if not ok:
            self.attempts += 1
        return ok

    @property
    def void(self) -> bool:
        return self.attempts >= PROOF_ATTEMPTS

    def delivered(self, sent: Sent) -> None:
        """The code went out (``sent.outcome == "sent"``): the token will be bound to the
        destination it went to, and to no other."""
        if sent.outcome != "sent" or not sent.binding:
            raise ValueError("the enrollment code was not sent")
        self.token = replace(self.token, bound=sent.binding)


def sent_enroll_change(state: OtpState, token: Token, secret: Secret) -> StateChange[Token]:
    """Add the proven ``token``, replacing the user's token of the same channel."""
    if token.type not in OUT_OF_BAND:
        raise ValueError(f"{token.type.value} is not an e-mail/SMS token")
    if not token.bound:
        raise ValueError("the token's destination was never proven (no code was sent to it)")
    replaced = {t.id for t in state.tokens if t.type is token.type}
    kept = tuple(t for t in state.tokens if t.id not in replaced)
    secrets_after = {k: v for k, v in state.secrets.items() if k not in replaced}
    secrets_after[token.id] = secret
    return StateChange(
        token, used=state.used.without(replaced), tokens=(*kept, token), secrets=secrets_after
    )


def shown_destination(token: Token, values: Sequence[bytes], prefixes: Sequence[str]) -> str:
    """Where ``token``'s codes would go, as ``show`` prints it: the masked destination in
    ``values`` (the entry's values of ``token.attribute``, read now), or why none would be
    sent ("no value", "2 values", ...).  Never the whole address or number."""
    from otpgate.outofband.codes import NoDestination, phone_number
    from otpgate.outofband.mail import valid_address
    from otpgate.outofband.mask import mask_email, mask_phone

    if not values:
        return "no value"
    if len(values) > 1:
        return f"{len(values)} values"
    if token.type is TokenType.SMS:
        try:  # the form first ("+" starts every +E.164 number), then the allowed prefixes
            number = phone_number(values, token.attribute, ("+",))
        except NoDestination:
            return "not one +E.164 number"
        try:
            phone_number(values, token.attribute, prefixes)
        except NoDestination:
            return f"{mask_phone(number)} (outside sms_country_prefixes)"
        return mask_phone(number)
    address = bytes(values[0]).decode("utf-8", "replace").strip()
    return mask_email(address) if valid_address(address) else "not one plain e-mail address"
