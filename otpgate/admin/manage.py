"""Help-desk changes to a user's OTP state (pure): each returns the StateChange to write.

The drivers (sync CLI, async gateway) call these inside their compare-and-swap loop, so
each function sees the freshly read state and may be called more than once.
"""

from __future__ import annotations

import hmac
from dataclasses import replace

from otpgate.admin.apppasswords import dropping_apps
from otpgate.auth.lockout import unlock
from otpgate.directory.records import OtpState, StateChange
from otpgate.errors import NoSuchToken, PolicyError
from otpgate.otp.oath import RESYNC_WINDOW, resync_hotp
from otpgate.otp.scratch import ScratchList
from otpgate.tokens import Token, TokenType, TokenUse, UsedState, check_label, new_token_id


def find_token(
    state: OtpState,
    ref: str | None,
    kinds: tuple[TokenType, ...] = (),
    fields: tuple[str, ...] = ("id", "serial", "label"),
) -> Token:
    """The token ``ref`` names (id, serial or label, case-insensitive; ``fields`` narrows
    that); with no ``ref``, the user's only token (of ``kinds``, if given)."""
    candidates = [t for t in state.tokens if not kinds or t.type in kinds]
    what = "/".join(k.value for k in kinds) + " " if kinds else ""
    if ref is None:
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise NoSuchToken(f"the user has no {what}token")
        ids = ", ".join(f"{t.id} ({t.type.value})" for t in candidates)
        raise NoSuchToken(f"the user has {len(candidates)} {what}tokens: name one of {ids}")
    wanted = ref.lower()
    for field in fields:
        hits = [t for t in candidates if getattr(t, field).lower() == wanted]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise NoSuchToken(f"{ref!r} names {len(hits)} tokens: use the token id")
    raise NoSuchToken(f"the user has no {what}token {ref!r}")


def _without(
    state: OtpState, ids: set[str], result: tuple[Token, ...]
) -> StateChange[tuple[Token, ...]]:
    """The tokens ``ids`` removed, and the app passwords created in portal sessions opened
    with their codes (a thief's app password goes with the stolen phone)."""
    change = StateChange(
        result,
        used=state.used.without(ids),
        tokens=tuple(t for t in state.tokens if t.id not in ids),
        secrets={k: v for k, v in state.secrets.items() if k not in ids},
    )
    kept = {t.id for t in state.tokens} - ids
    ended = {a.id for a in state.apps if a.by and a.by not in kept}  # theirs, and orphans
    return dropping_apps(state, change, ended)


def revoke_change(state: OtpState, ref: str | None) -> StateChange[tuple[Token, ...]]:
    """Remove one token, its secret and its use state."""
    token = find_token(state, ref)
    return _without(state, {token.id}, (token,))


def reset_change(state: OtpState) -> StateChange[tuple[Token, ...]]:
    """Remove every token (lost phone, left the company); lockout state is kept, and so are
    the app passwords made with the CLI (those made in portal sessions go with their
    tokens)."""
    return _without(state, {t.id for t in state.tokens}, state.tokens)


def unlock_change(state: OtpState) -> StateChange[UsedState]:
    return StateChange(state.used, used=unlock(state.used))


def resync_change(
    state: OtpState,
    ref: str | None,
    codes: tuple[str, str, str],
    now: float,
    window: int = RESYNC_WINDOW,
) -> StateChange[tuple[Token, int]]:
    """Find three consecutive codes of an HOTP token within ``window`` counters after the
    last accepted one; they become used (the next login needs the code after them)."""
    token = find_token(state, ref, (TokenType.HOTP,))
    secret = state.secrets.get(token.id)
    if secret is None:
        raise PolicyError(f"token {token.id} has no stored secret")
    use = state.used.use_of(token.id)
    counter = resync_hotp(
        secret.key, codes, use.last, digits=token.digits, algorithm=token.algorithm, window=window
    )
    if counter is None:
        raise PolicyError(
            f"the three codes are not consecutive codes of token {token.id} within "
            f"{window} counters after the last one used ({use.last}); type three new ones"
        )
    new = TokenUse(last=counter, drift=0, used_at=int(now), scratch_used=use.scratch_used)
    used = replace(state.used.with_use(token.id, new), failures=0)
    return StateChange((token, counter), used=used)


def scratch_change(
    state: OtpState, scratch: ScratchList, now: float, label: str = "scratch list"
) -> StateChange[Token]:
    """A new scratch list; the previous one (and its used codes) is gone.  A temporary list
    (given for a lost device, ``suspend.lost_change``) stays until it expires."""
    old = {t.id for t in state.tokens if t.type is TokenType.SCRATCH and not t.expires}
    token = Token(
        id=new_token_id(), type=TokenType.SCRATCH, created=int(now), label=label, scratch=scratch
    )
    return StateChange(
        token,
        used=state.used.without(old),
        tokens=(*(t for t in state.tokens if t.id not in old), token),
        secrets={k: v for k, v in state.secrets.items() if k not in old},
    )


MAX_LABEL = 64
"""Characters of a device's name (the portal's field, ``otpgate`` labels)."""


def rename_change(state: OtpState, token_id: str, label: str) -> StateChange[Token]:
    """Give one of the user's tokens (by its id) a new label: 1 to ``MAX_LABEL`` characters,
    no control, separator or bidi characters (``tokens.check_label``)."""
    label = label.strip()
    try:
        check_label(label)
    except ValueError as exc:
        raise PolicyError(str(exc)) from exc
    if not label or len(label) > MAX_LABEL:
        raise PolicyError(f"a device name has 1 to {MAX_LABEL} characters")
    token = next((t for t in state.tokens if t.id == token_id), None)
    if token is None:
        raise NoSuchToken(f"you have no token {token_id!r}")
    renamed = replace(token, label=label)
    return StateChange(
        renamed, tokens=tuple(renamed if t.id == token_id else t for t in state.tokens)
    )


def advance_change(
    state: OtpState, token_id: str, key: bytes, counter: int, now: float
) -> StateChange[tuple[Token, bool]]:
    """Record ``counter`` as an HOTP token's last used counter: what a resynchronisation
    found outside the compare-and-swap (the portal runs the search in a thread).  Forward
    only: a counter at or before the one stored now (a login meanwhile) writes nothing.
    ``key`` must still be the token's key (it was not replaced meanwhile).  The result says
    whether the counter moved."""
    token = next((t for t in state.tokens if t.id == token_id), None)
    secret = state.secrets.get(token_id)
    if token is None or token.type is not TokenType.HOTP or secret is None:
        raise NoSuchToken(f"you have no HOTP token {token_id!r}")
    if not hmac.compare_digest(secret.key, key):
        raise PolicyError(f"token {token_id} changed meanwhile; type three new codes")
    use = state.used.use_of(token_id)
    if counter <= use.last:
        return StateChange((token, False))
    new = TokenUse(last=counter, drift=0, used_at=int(now), scratch_used=use.scratch_used)
    return StateChange((token, True), used=state.used.with_use(token_id, new))
