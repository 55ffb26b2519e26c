"""New software tokens and their key URIs (pure)."""

from __future__ import annotations

import base64
import hmac
import os
import time
from collections.abc import Callable
from urllib.parse import quote, urlencode

from otpgate.auth.config import OtpConfig
from otpgate.directory.records import OtpState, StateChange
from otpgate.errors import PolicyError
from otpgate.otp.oath import Algorithm, check_counter, check_digits, check_period
from otpgate.tokens import Secret, Token, TokenType, TokenUse, new_token_id

SOFTWARE = (TokenType.TOTP, TokenType.HOTP)
DEVICES = (TokenType.TOTP, TokenType.HOTP, TokenType.YUBICO)
"""What counts towards ``max_tokens_per_user`` (a printed scratch list is not a device)."""
KEY_BYTES = {Algorithm.SHA1: 20, Algorithm.SHA256: 32, Algorithm.SHA512: 64}


def new_oath_token(
    otp: OtpConfig,
    kind: TokenType = TokenType.TOTP,
    key: bytes | None = None,
    label: str = "",
    now: float | None = None,
    *,
    digits: int | None = None,
    algorithm: Algorithm | None = None,
    period: int | None = None,
) -> tuple[Token, Secret]:
    """A new TOTP/HOTP token with a fresh key (as long as the hash, RFC 4226 §4 R6).

    ``digits``, ``algorithm`` and ``period`` default to the ``[otp]`` settings.
    """
    if kind not in SOFTWARE:
        raise ValueError(f"{kind.value} is not an OATH software token")
    alg = algorithm or otp.algorithm
    token = Token(
        id=new_token_id(),
        type=kind,
        created=int(time.time() if now is None else now),
        label=label,
        digits=check_digits(digits if digits is not None else otp.digits),
        algorithm=alg,
        period=check_period(period if period is not None else otp.period),
    )
    if key is not None and len(key) < 10:
        raise ValueError(f"a {len(key)}-byte key is too short: give at least 80 bits (16 Base32)")
    return token, Secret(key if key is not None else os.urandom(KEY_BYTES[alg]))


def otpauth_uri(token: Token, secret: Secret, account: str, issuer: str, counter: int = 0) -> str:
    """The Google Authenticator key URI (otpauth://TYPE/ISSUER:ACCOUNT?...).

    ``counter`` (HOTP) is the next counter the token will use.
    """
    params = {
        "secret": base64.b32encode(secret.key).decode().rstrip("="),
        "issuer": issuer,
        "algorithm": token.algorithm.otpauth_name,
        "digits": str(token.digits),
    }
    if token.type is TokenType.TOTP:
        params["period"] = str(token.period)
    else:
        params["counter"] = str(counter)
    label = quote(f"{issuer}:{account}", safe="@:")
    return f"otpauth://{token.type.value}/{label}?{urlencode(params, quote_via=quote)}"


def enroll_change(
    state: OtpState,
    token: Token,
    secret: Secret,
    max_tokens: int,
    replace_software: bool = True,
    last: int = -1,
) -> StateChange[Token]:
    """Add ``token``; by default it replaces the user's existing software token.

    At most ``max_tokens`` devices (TOTP, HOTP, Yubico; scratch lists do not count) per
    user.  ``last`` is the token's last used counter (imported hardware), -1 for new.
    """
    if last != -1:
        check_counter(last, "last used counter")
    duplicate = same_key_as(state, secret, token)
    if duplicate is not None:
        serial = next((t.serial for t in state.tokens if t.id == duplicate and t.serial), "")
        raise PolicyError(
            f"this key is already enrolled as token {duplicate}"
            + (f" (serial {serial})" if serial else "")
            + ": two tokens with one key would accept every code twice"
        )
    replaced = {t.id for t in state.tokens if replace_software and t.type in SOFTWARE}
    kept = tuple(t for t in state.tokens if t.id not in replaced)
    devices = sum(1 for t in kept if t.type in DEVICES)
    if token.type in DEVICES and devices + 1 > max_tokens:
        raise PolicyError(
            f"the user already has {devices} device(s), the maximum is {max_tokens} "
            "([otp].max_tokens_per_user): revoke one first"
        )
    secrets_after = {k: v for k, v in state.secrets.items() if k not in replaced}
    secrets_after[token.id] = secret
    used = state.used.without(replaced)
    if last >= 0:
        used = used.with_use(token.id, TokenUse(last=last))
    return StateChange(token, used=used, tokens=(*kept, token), secrets=secrets_after)


def same_key_as(state: OtpState, secret: Secret, token: Token) -> str | None:
    """The id of the user's token that already holds ``secret``'s key (or, for a YubiKey,
    the same public and private id), else None.

    Each token has its own use state, so one key enrolled twice accepts each code once per
    copy.  Every stored secret is compared, in constant time and without an early exit.
    The user's tokens being replaced count too: re-enrolling a key restarts its counter.
    """
    found: str | None = None
    by_id = {t.id: t for t in state.tokens}
    for token_id, other in state.secrets.items():
        same = hmac.compare_digest(other.key, secret.key)
        if token.type is TokenType.YUBICO and other.private_id:
            mine = by_id.get(token_id)
            same_device = hmac.compare_digest(other.private_id, secret.private_id) & (
                mine is not None
                and hmac.compare_digest(
                    mine.public_id.lower().encode(), token.public_id.lower().encode()
                )
            )
            same = same | same_device
        if same and found is None:
            found = token_id
    return found


def replaced_tokens(state: OtpState, change: StateChange[Token]) -> tuple[Token, ...]:
    """The tokens of ``state`` that ``change`` removes."""
    after = {t.id for t in change.tokens} if change.tokens is not None else None
    if after is None:
        return ()
    return tuple(t for t in state.tokens if t.id not in after)


def enroll_replacing(
    token: Token, secret: Secret, max_tokens: int, replace_software: bool = True
) -> Callable[[OtpState], StateChange[tuple[Token, tuple[Token, ...]]]]:
    """The state change of ``otpgate enroll``: :func:`enroll_change`, and it also tells
    which of the user's tokens the new one replaced."""

    def change(state: OtpState) -> StateChange[tuple[Token, tuple[Token, ...]]]:
        planned = enroll_change(state, token, secret, max_tokens, replace_software)
        gone = replaced_tokens(state, planned)
        return StateChange((planned.result, gone), planned.used, planned.tokens, planned.secrets)

    return change
