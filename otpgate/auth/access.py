"""The channel's access rules as a step of the pipeline: who may log in through a NAS or an
LDAP listener (``Channel.allow_groups``/``deny_groups``), decided right after the entry is
resolved, before anything else is looked at or spent.  The rule itself is pure
(``policy.channel_refusal``); here only when to read the entry again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from otpgate.auth.policy import channel_refusal
from otpgate.auth.requests import AuthResult, Channel, Login, Sasl
from otpgate.directory.records import UserEntry
from otpgate.directory.store import OtpStore


async def channel_rule(
    request: Login, user: UserEntry, reread: Callable[[], Awaitable[UserEntry]]
) -> tuple[UserEntry, str | None]:
    """The rule on ``user``: an entry from the cache (at most ``state_cache_seconds`` old)
    may allow; a refusal is made on the entry ``reread`` reads fresh, like the prologue's
    other refusals."""
    channel = request.channel
    refusal = channel_refusal(channel, user.groups, user.unknown_groups)
    if refusal is not None and user.from_cache:
        user = await reread()
        refusal = channel_refusal(channel, user.groups, user.unknown_groups)
    return user, refusal


def pin_refusal(channel: Channel) -> str:
    """Why a user without a PIN is refused on a channel with ``require_pin``."""
    return f"no PIN set ({channel.kind} {channel.name or channel.front_end} requires one)"


def pin_required(channel: Channel) -> str:
    """What the decision refuses a user without a PIN with ("": no PIN required here)."""
    return pin_refusal(channel) if channel.pin and channel.require_pin else ""


async def sasl_refusal(store: OtpStore, request: Sasl) -> AuthResult | None:
    """A SASL bind on a restricted listener: the rule on the account it names, before the
    bind is forwarded (an account that is no user entry cannot be checked: refused)."""
    named = await store.resolve(request.name)
    named, why = await channel_rule(request, named, lambda: store.resolve(request.name, True))
    if why is None:
        return None
    return AuthResult(False, f"SASL {request.mechanism}: {why}", named.dn)
