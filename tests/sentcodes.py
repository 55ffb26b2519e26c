"""E-mail/SMS tokens for tests, as an enrollment proof leaves them: bound to the destination
the proof went to (``oob.destination_binding``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from otpgate.admin.sentcodes import new_sent_token, sent_enroll_change
from otpgate.auth.oob import destination_binding
from otpgate.outofband.codes import SEPARATORS
from otpgate.tokens import Secret, Token, TokenType


def proven_token(
    kind: TokenType, attribute: str, destination: str, digits: int = 6, now: float | None = None
) -> tuple[Token, Secret]:
    """A new token of ``kind`` naming ``attribute``, bound to ``destination`` (normalised as
    the sender normalises it: "+491511234589", "alice@example.org")."""
    token, secret = new_sent_token(kind, attribute, digits, now=now)
    return replace(token, bound=destination_binding(secret.key, destination)), secret


def normalised(kind: TokenType, value: bytes) -> str:
    """A directory value as the sender compares it (``outofband/codes.py``)."""
    text = value.decode("utf-8").strip()
    return text.translate(SEPARATORS) if kind is TokenType.SMS else text


async def enroll_proven(gateway: Any, dn: str, kind: TokenType, attribute: str) -> Token:
    """An e-mail/SMS token bound to the value the entry holds now, written through the
    gateway's own store (as an enrollment proof that went to that value would write it)."""
    (value,) = await gateway.entry_values(dn, attribute)
    token, secret = proven_token(kind, attribute, normalised(kind, value))
    user = await gateway.store.resolve(dn, fresh=True)
    await gateway.store.update(user, lambda s: sent_enroll_change(s, token, secret))
    return token
