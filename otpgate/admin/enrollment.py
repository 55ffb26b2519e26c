"""New software tokens and their key URIs (pure)."""

from __future__ import annotations

import base64
import os
import time
from urllib.parse import quote, urlencode

from otpgate.config import OtpConfig
from otpgate.directory.state import OtpState, StateChange
from otpgate.tokens import Secret, Token, TokenType, new_token_id

SOFTWARE = (TokenType.TOTP, TokenType.HOTP)


def new_oath_token(
    otp: OtpConfig,
    kind: TokenType = TokenType.TOTP,
    key: bytes | None = None,
    label: str = "",
    now: float | None = None,
) -> tuple[Token, Secret]:
    """A new TOTP/HOTP token with a fresh key (as long as the hash, RFC 4226 §4 R6)."""
    if kind not in SOFTWARE:
        raise ValueError(f"{kind.value} is not an OATH software token")
    key_len = {"sha1": 20, "sha256": 32, "sha512": 64}[otp.algorithm.value]
    token = Token(
        id=new_token_id(),
        type=kind,
        created=int(time.time() if now is None else now),
        label=label,
        digits=otp.digits,
        algorithm=otp.algorithm,
        period=otp.period,
    )
    return token, Secret(key if key is not None else os.urandom(key_len))


def otpauth_uri(token: Token, secret: Secret, account: str, issuer: str) -> str:
    """The Google Authenticator key URI (otpauth://TYPE/ISSUER:ACCOUNT?...)."""
    params = {
        "secret": base64.b32encode(secret.key).decode().rstrip("="),
        "issuer": issuer,
        "algorithm": token.algorithm.otpauth_name,
        "digits": str(token.digits),
    }
    if token.type is TokenType.TOTP:
        params["period"] = str(token.period)
    else:
        params["counter"] = "0"
    label = quote(f"{issuer}:{account}", safe="@:")
    return f"otpauth://{token.type.value}/{label}?{urlencode(params, quote_via=quote)}"


def enroll_change(
    state: OtpState, token: Token, secret: Secret, max_tokens: int, replace_software: bool = True
) -> StateChange[Token]:
    """Add ``token``; by default it replaces the user's existing software token."""
    replaced = {t.id for t in state.tokens if replace_software and t.type in SOFTWARE}
    kept = tuple(t for t in state.tokens if t.id not in replaced)
    if len(kept) + 1 > max_tokens:
        raise ValueError(f"the user already has {len(kept)} tokens (maximum {max_tokens})")
    secrets_after = {k: v for k, v in state.secrets.items() if k not in replaced}
    secrets_after[token.id] = secret
    return StateChange(
        token,
        used=state.used.without(replaced),
        tokens=(*kept, token),
        secrets=secrets_after,
    )
