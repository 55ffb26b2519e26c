"""SASL binds through the LDAP proxy: who may, and whether the directory bound that account.

For SASL the directory takes the identity from the credentials, not from the bind name, so
a bind *named* as an exempt account could carry anyone's credentials.  Rules:

* only with ``[policy] allow_sasl_for_exempt``, and only for a bind named as an exempt DN;
* after the directory's success, Who Am I? (RFC 4532) on the same connection must name that
  entry (``dn:`` compared by RDNs; AD's ``u:DOMAIN\\user`` resolved through the user lookup);
  anything else is refused and the connection, bound as someone else, is closed;
* every SASL bind, accepted or not, is one audit event.

The LDAP proxy supplies the two protocol steps (``forward``, ``who_am_i``); the decision is here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from otpgate.auth.policy import same_dn
from otpgate.auth.requests import AuthRequest, AuthResult
from otpgate.directory.ldapdata import SUCCESS
from otpgate.errors import DirectoryError

if TYPE_CHECKING:
    from otpgate.auth.pipeline import Authenticator

SASL_BIND_IN_PROGRESS = 14

ForwardBind = Callable[[], Awaitable[int]]
"""Send the client's own bind upstream; its result code (the proxy keeps the response)."""
WhoAmI = Callable[[], Awaitable[tuple[int, bytes]]]
"""Ask Who Am I? upstream: (result code, authzId)."""


@dataclass(frozen=True)
class SaslResult:
    result: AuthResult
    directory_code: int | None = None
    """The directory's answer to the forwarded bind (None: not forwarded)."""
    disconnect: bool = False
    """The upstream connection is bound as someone else (or nobody knows whom): close it."""

    @property
    def in_progress(self) -> bool:
        return self.directory_code == SASL_BIND_IN_PROGRESS


async def sasl_bind(
    auth: Authenticator, request: AuthRequest, mechanism: str, forward: ForwardBind, who: WhoAmI
) -> SaslResult:
    mech = f"SASL {mechanism}"

    def failed(why: str, down: bool) -> SaslResult:
        return SaslResult(AuthResult(False, f"{mech}: {why}", unavailable=down))

    def audit(done: SaslResult) -> tuple[str, str, str | None, str | None]:
        outcome = "challenge" if done.in_progress else ("accept" if done.result.ok else "reject")
        return outcome, done.result.reason, done.result.dn, None

    return await auth._decided(request, _sasl(auth, request, mech, forward, who), failed, audit)


async def _sasl(
    auth: Authenticator, request: AuthRequest, mech: str, forward: ForwardBind, who: WhoAmI
) -> SaslResult:
    policy = auth.policy
    if not policy.config.allow_sasl_for_exempt:
        return SaslResult(AuthResult(False, f"{mech}: SASL is off (allow_sasl_for_exempt)"))
    if not request.name or not policy.is_exempt(request.name):
        return SaslResult(AuthResult(False, f"{mech}: not an exempt account"))
    code = await forward()
    if code == SASL_BIND_IN_PROGRESS:
        return SaslResult(AuthResult(False, f"{mech}: challenge"), code)
    if code != SUCCESS:
        return SaslResult(AuthResult(False, f"{mech}: refused by the directory ({code})"), code)
    bound, why = await _bound_entry(auth, who)
    if bound is None or not same_dn(bound, request.name):
        why = why or f"bound as {bound!r}, not as the named account"
        return SaslResult(AuthResult(False, f"{mech}: {why}"), code, disconnect=True)
    return SaslResult(AuthResult(True, f"{mech}: identity confirmed by Who Am I?", bound), code)


async def _bound_entry(auth: Authenticator, who: WhoAmI) -> tuple[str | None, str]:
    """The DN the upstream connection is bound as, from Who Am I? (or None and why)."""
    code, value = await who()
    if code != SUCCESS:
        return None, f"the directory has no Who Am I? ({code}): SASL refused"
    authz = value.decode("utf-8", "replace")
    if authz[:3].lower() == "dn:":
        return authz[3:], ""
    if authz[:2].lower() == "u:":
        # Active Directory answers u:DOMAIN\\user: find that account's entry.
        try:
            return (await auth.store.resolve(authz[2:])).dn, ""
        except DirectoryError as exc:
            return None, f"bound as {authz!r}, which cannot be resolved: {exc}"
    return None, f"bound as {authz!r}, not as the named account"
