"""The app-password branch of the pipeline: a secret of the app-password form
(``apppass.FORM``) from a user who holds app passwords, on a bind or a RADIUS password.

It replaces password + code on the listeners and NASes of its scope, so nothing is bound
upstream: the user's directory password is neither needed nor sent.  What the directory
would have refused at a bind is therefore read from the entry the pipeline resolved: a
disabled AD account is no user (the profile's filter), an expired one is refused
(``accountExpires``), like every way in.  The entry may come from the gateway's cache, as
for every login (at most ``state_cache_seconds`` old, 10 s by default): a disabled account
is refused within that.  The decision is made inside the state engine's compare-and-swap,
like a code's, and every accepted login writes its last use: a revocation made through any
gateway rewrites the use state, so a login holding an older read loses its
compare-and-swap and is decided again on what the directory holds — at once.  A refusal
that writes nothing is decided on a fresh read too (``engine.update``).

Order (``decide_app``): the user's suspension; the app-password lockout (its own, apart
from the codes'); the match (a miss counts towards that lockout); the match's end date;
its scope (``[app_passwords]`` must still take the place, and the app password must name
it, and the client's network if it names any).  Out of scope is refused as a wrong password
would be, audited as such, and not counted: it is no guess.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from otpgate.apppass import AppPassword, looks_like_app_password, matching
from otpgate.auth.appconfig import AppPasswordConfig
from otpgate.auth.config import LockoutConfig
from otpgate.auth.lockout import APPS, is_locked, record_failure, with_unrecorded
from otpgate.auth.policy import Decision
from otpgate.auth.requests import (
    Appended,
    AuthRequest,
    AuthResult,
    Channel,
    PasswordStep,
    Trace,
)
from otpgate.auth.suspension import until_text, user_suspension
from otpgate.auth.trace import Ready, note
from otpgate.directory.records import OtpState, StateChange
from otpgate.tokens import AppUse

if TYPE_CHECKING:
    from otpgate.auth.pipeline import Authenticator

APP_PASSWORD = "app password"  # noqa: S105 - a policy name, no secret
"""The policy the audit records for these logins (``policy_facts``)."""
LOCKED = "app passwords locked out"
WRONG = "wrong app password"
MAX_CLIENT = 64
MAX_WHERE = 256


@dataclass(frozen=True)
class AppVerdict:
    app: AppPassword | None
    why: str

    @property
    def ok(self) -> bool:
        return self.app is not None and self.why == "accepted"


def app_secret(request: AuthRequest, settings: AppPasswordConfig) -> str | None:
    """The secret of ``request`` if it is an app-password login (the feature on, a bind or
    a RADIUS password of the app-password form)."""
    if not settings.enabled:
        return None
    if isinstance(request, Appended):
        secret = request.typed
    elif isinstance(request, PasswordStep):
        secret = request.password
    else:
        return None
    return secret if looks_like_app_password(secret) else None


def decide_app(
    state: OtpState,
    typed: str,
    channel: Channel,
    client: str | None,
    now: float,
    places: AppPasswordConfig,
    rules: LockoutConfig,
    pending: int = 0,
) -> StateChange[AppVerdict]:
    """What an app-password login writes (pure): see the module's order.  ``pending``:
    wrong ones this gateway decided but could not write (``UnrecordedFailures``): they
    count, as a code's do."""
    used = with_unrecorded(state.used, pending, now, rules, APPS)
    held = user_suspension(used, now)
    if held is not None:  # the help desk's "suspend all of her OTP" holds app passwords too
        return StateChange(AppVerdict(None, f"suspended for the user ({until_text(held)})"))
    if is_locked(used, now, APPS):
        return StateChange(AppVerdict(None, LOCKED))
    taken_here = places.allows(channel.front_end, channel.where)
    app = matching(state.apps, state.app_key, typed)
    if app is None and not taken_here:
        # No app password works here: a miss is no guess at one, and counting it would let
        # anyone who knows a name lock her app passwords from anywhere.
        return StateChange(AppVerdict(None, f"{WRONG} (not taken here)"))
    if app is None:
        after = record_failure(used, now, rules, APPS)
        why = f"{WRONG} (now locked out)" if is_locked(after, now, APPS) else WRONG
        return StateChange(AppVerdict(None, why), used=after)
    if app.expired(now):
        return StateChange(AppVerdict(app, f"app password {app.name!r} expired"))
    if app.by and state.token(app.by) is None:
        # The token whose session made it is gone (revoked, replaced, re-enrolled, handed
        # back): whatever route removed it, the app password ends with it.
        return StateChange(AppVerdict(app, f"app password {app.name!r} ended with token {app.by}"))
    held_with = used.suspensions.get(app.by) if app.by else None
    if held_with is not None and held_with.active(now):
        # Made in a session the token opened: a suspended (say, missing) phone holds it.
        why = f"app password {app.name!r} suspended with token {app.by}"
        return StateChange(AppVerdict(app, why))
    where = channel.where
    if not taken_here or not app.scope.covers(channel.front_end, where, client):
        return StateChange(AppVerdict(app, f"app password {app.name!r} out of scope"))
    use = AppUse(int(now), (client or "")[:MAX_CLIENT], where[:MAX_WHERE])
    after = APPS.set(replace(used, apps={**used.apps, app.id: use}), 0, 0)
    return StateChange(AppVerdict(app, "accepted"), used=after)


async def app_login(
    auth: Authenticator, request: Appended | PasswordStep, secret: str, trace: Trace
) -> AuthResult | None:
    """The login, or None when the user holds no app password (then the secret is taken as
    what it would otherwise be: password + code)."""
    user, refusal = await auth.admitted(request, fresh=False)
    if refusal is not None:
        auth.found(request, Ready(user, Decision(True, APP_PASSWORD), None, refusal))
        return AuthResult(False, refusal, user.dn)
    now = auth.clock.seconds()
    state = auth.store.decode(user)
    if not state.apps and user.from_cache:
        # Created meanwhile on another gateway?  Never take an app password for a password
        # + code on an old read: it would be bound upstream as a password.
        user = await auth.resolve(request, fresh=True)
        state = auth.store.decode(user)
    if not state.apps:
        return None
    auth.found(request, Ready(user, Decision(False, APP_PASSWORD), state))
    if user.expires_at is not None and user.expires_at <= now:
        return AuthResult(False, "expired", user.dn)
    if user.disabled:  # a site's own user filter may not exclude disabled accounts
        return AuthResult(False, "account disabled", user.dn)
    places, rules = auth.settings.app_passwords, auth.settings.lockout
    pending = auth.unrecorded_apps.count(user.entry_id, now)

    def change(current: OtpState) -> StateChange[AppVerdict]:
        channel, client = request.channel, request.client
        return decide_app(current, secret, channel, client, now, places, rules, pending)

    # A failure whose write has an unknown outcome still counts (on this gateway).
    verdict, user = await auth.spend(user, change, now, auth.unrecorded_apps)
    app_id = verdict.app.id if verdict.app is not None else None
    if not verdict.ok or verdict.app is None:
        note(trace, "app password", False, verdict.why)
        return AuthResult(False, verdict.why, user.dn, app_id)
    name = verdict.app.name
    note(trace, "app password", True, f"{name!r} accepted, nothing bound upstream")
    return AuthResult(True, f"app password {name!r} accepted", user.dn, app_id)
