"""A front end's authorization of an accepted login, derived from the entry the prologue
resolved (RADIUS reply attributes): the pipeline hands the request's ``authorize`` plain
data (``Entitlement``) and keeps what it returns in ``AuthResult.authorized``.  What the
authorization means stays in the front end; a refusal is the login's audited reason."""

from __future__ import annotations

from otpgate.auth.requests import AuthRequest, AuthResult, Entitlement
from otpgate.directory.records import UserEntry
from otpgate.errors import AuthorizationRefused


def authorized(request: AuthRequest, result: AuthResult, user: UserEntry | None) -> AuthResult:
    """``result`` with the request's authorization if it is an accept (not a challenge step);
    refused if the authorization refuses.  ``user``: the entry the login resolved (None for
    an exempt DN's password alone, which looks nothing up)."""
    authorize = request.authorize
    if authorize is None or not result.ok or result.needs_otp or result.challenge:
        return result
    if user is None:
        facts = Entitlement(result.dn)
    else:
        facts = Entitlement(user.dn, user.groups, user.unknown_groups, user.attributes)
    try:
        granted = authorize(facts)
    except AuthorizationRefused as exc:
        return AuthResult(False, f"authorization refused: {exc}", result.dn, result.token_id)
    # ``result`` with ``authorized`` set, by a plain copy of its instance dict:
    # ``dataclasses.replace`` measured 4.6 µs, a quarter of the reply step's budget.
    accepted = object.__new__(AuthResult)
    accepted.__dict__.update(result.__dict__)
    accepted.__dict__["authorized"] = granted
    return accepted
