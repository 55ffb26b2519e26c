"""E-mail/SMS tokens for tests, as an enrollment proof leaves them: bound to the destination
the proof went to (``oob.destination_binding``)."""

from __future__ import annotations

from dataclasses import replace

from otpgate.admin.sentcodes import new_sent_token
from otpgate.auth.oob import destination_binding
from otpgate.tokens import Secret, Token, TokenType


def proven_token(
    kind: TokenType, attribute: str, destination: str, digits: int = 6, now: float | None = None
) -> tuple[Token, Secret]:
    """A new token of ``kind`` naming ``attribute``, bound to ``destination`` (normalised as
    the sender normalises it: "+491511234589", "alice@example.org")."""
    token, secret = new_sent_token(kind, attribute, digits, now=now)
    return replace(token, bound=destination_binding(token.id, destination)), secret
