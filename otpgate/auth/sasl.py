"""SASL binds through the LDAP proxy: who may, and whether the directory bound that account.

For SASL the directory takes the identity from the credentials, not from the bind name, so
a bind *named* as an exempt account could carry anyone's credentials.  Rules:

* only with ``[policy] allow_sasl_for_exempt``, and only for a bind named as an exempt DN
  that is no administrator (``admin_groups``: admins always need a code);
* after the directory's success, Who Am I? (RFC 4532) on the same connection must name that
  entry (``dn:`` compared by RDNs; AD's ``u:DOMAIN\\user`` resolved through the user lookup);
  anything else is refused and the connection, bound as someone else, is closed;
* every SASL bind, accepted or not, is one audit event (the pipeline's door writes it).

The LDAP proxy supplies the two protocol steps (``forward``, ``who_am_i``); the decision is here.
"""

from __future__ import annotations

from otpgate.auth.policy import Policy
from otpgate.auth.requests import AuthResult, Sasl, WhoAmI
from otpgate.directory.ldapdata import SUCCESS
from otpgate.directory.store import OtpStore
from otpgate.dn import same_dn
from otpgate.errors import DirectoryError

SASL_BIND_IN_PROGRESS = 14


async def sasl_login(policy: Policy, store: OtpStore, request: Sasl, now: float) -> AuthResult:
    """The pipeline's branch for ``Sasl`` (its door audits the result).  Only exemptions by
    name (DN, subtree, pattern) that hold now on this channel and from this client count:
    a group exemption would need the entry of a name SASL has not proved yet."""
    mech = f"SASL {request.mechanism}"
    if not policy.config.allow_sasl_for_exempt:
        return AuthResult(False, f"{mech}: SASL is off (allow_sasl_for_exempt)")
    name, channel = request.name, request.channel
    if not name or not policy.exempt_by_name(name, channel, request.client, now):
        return AuthResult(False, f"{mech}: not an exempt account")
    if policy.config.admin_groups:
        # An exempt account that is also an administrator needs a code, which SASL cannot
        # carry: looked up first, like an exempt password bind with admin groups set.
        user = await store.resolve(request.name)
        decision = policy.decide(user.dn, user.groups, request.client, request.channel, now)
        if decision.needs_otp:
            return AuthResult(False, f"{mech}: {decision.reason} needs a code", user.dn)
    code = await request.forward()
    if code == SASL_BIND_IN_PROGRESS:
        return AuthResult(False, f"{mech}: challenge", directory_code=code)
    if code != SUCCESS:
        return AuthResult(False, f"{mech}: refused by the directory ({code})", directory_code=code)
    bound, why = await _bound_entry(store, request.who_am_i)
    if bound is None or not same_dn(bound, request.name):
        why = why or f"bound as {bound!r}, not as the named account"
        return AuthResult(False, f"{mech}: {why}", directory_code=code, disconnect=True)
    return AuthResult(
        True, f"{mech}: identity confirmed by Who Am I?", bound, directory_code=code
    )


async def _bound_entry(store: OtpStore, who: WhoAmI) -> tuple[str | None, str]:
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
            return (await store.resolve(authz[2:])).dn, ""
        except DirectoryError as exc:
            return None, f"bound as {authz!r}, which cannot be resolved: {exc}"
    return None, f"bound as {authz!r}, not as the named account"
