"""The static password, checked upstream only after the code was spent: a simple bind as
the user (``check_password``), never with an empty password."""

from __future__ import annotations

from otpgate.auth.requests import AuthResult, PasswordCheck
from otpgate.directory.ldapdata import INVALID_CREDENTIALS, SUCCESS
from otpgate.directory.records import UserEntry


async def password_only(
    name: str, password: str, check_password: PasswordCheck | None, exempt: str
) -> AuthResult:
    """An exempt DN's password alone, bound as the name given (no lookup was made);
    ``exempt``: the exemption's reason ("exempt: subtree ...")."""
    if check_password is None or not password:
        return AuthResult(False, "no password", name)
    code, message = await check_password(name, password.encode("utf-8"))
    if code == SUCCESS:
        return AuthResult(True, f"{exempt}: password accepted", name)
    return AuthResult(False, f"{exempt}: bind refused ({code}) {message}".rstrip(), name)


async def bind_password(
    user: UserEntry,
    password: str,
    check_password: PasswordCheck | None,
    why: str,
    token_id: str | None = None,
    scratch_remaining: int | None = None,
    typed: bool = False,
) -> AuthResult:
    """The user's password bound upstream; ``why`` is the reason of an accept.  ``typed``:
    the password was split off what the user typed (its length comes back, for the bind
    cache)."""
    if check_password is None:
        return AuthResult(False, "no password check available", user.dn)
    if not password:
        return AuthResult(False, "empty password refused", user.dn)
    code, message = await check_password(user.dn, password.encode("utf-8"))
    if code == SUCCESS:
        length = len(password) if typed else None
        return AuthResult(True, why, user.dn, token_id, False, scratch_remaining, length)
    reason = "wrong password" if code == INVALID_CREDENTIALS else f"bind refused ({code})"
    # AD puts the real reason (data 52e, 533, 701, 775, ...) in the diagnostic message.
    return AuthResult(False, f"{reason}: {message}".rstrip(": "), user.dn, token_id)
