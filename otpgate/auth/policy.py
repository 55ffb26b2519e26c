"""Who needs an OTP: exemptions, the grace for users not yet enrolled, required groups,
trusted networks, admins.  The pipeline's policy step asks ``decide`` with the entry it
resolved, the channel and the time; ``exemptions.py`` holds the matching."""

from __future__ import annotations

from dataclasses import dataclass

from otpgate.auth.config import PolicyConfig
from otpgate.auth.exemptions import Exemption, Exemptions, first_active, grace_for
from otpgate.auth.requests import Channel
from otpgate.configfile import Network, in_networks
from otpgate.dn import normalise_dn

__all__ = ["Decision", "Policy", "channel_refusal", "in_networks", "password_only_enrollment"]

REQUIRED = "policy"
"""The reason of a decision that a code is needed, with nothing more to say."""


@dataclass(frozen=True)
class Decision:
    needs_otp: bool
    reason: str


def legacy_exemptions(config: PolicyConfig) -> tuple[Exemption, ...]:
    """``exempt_dns`` and ``exempt_subtrees``: exemptions without scope or end."""
    return (
        *(Exemption("dn", d) for d in config.exempt_dns),
        *(Exemption("subtree", d) for d in config.exempt_subtrees),
        *config.exemptions,
    )


class Policy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.exemptions = Exemptions(legacy_exemptions(config))
        self._required = {normalise_dn(g) for g in config.require_otp_groups}
        self._admins = {normalise_dn(g) for g in config.admin_groups}

    def exempt_by_name(
        self, name: str, channel: Channel, client: str | None, now: float
    ) -> Exemption | None:
        """The exemption of the DN ``name`` (by DN, subtree or pattern) that holds for this
        login now, decided without a lookup (None: none does)."""
        if not self.exemptions.by_name:
            return None
        return first_active(self.exemptions.named(name), channel, client, now)[0]

    def decide(
        self,
        dn: str,
        groups: tuple[str, ...],
        client: str | None,
        channel: Channel,
        now: float,
    ) -> Decision:
        groups_norm = {normalise_dn(g) for g in groups}
        is_admin = bool(self._admins & groups_norm)
        if is_admin and self.config.admins_always_need_otp:
            return Decision(True, "administrator")
        ended: Exemption | None = None
        if self.exemptions:
            candidates = self.exemptions.matching(dn, groups_norm)
            exemption, ended = first_active(candidates, channel, client, now)
            if exemption is not None:
                return Decision(False, exemption.reason())
        if client is not None and in_networks(client, self.config.trusted_networks):
            return Decision(False, "trusted network")
        if self._required and not (self._required & groups_norm):
            return Decision(False, "not in a group that requires an OTP")
        return Decision(True, f"{REQUIRED} ({ended.ended()})" if ended else REQUIRED)

    def grace(self, groups: tuple[str, ...], now: float) -> tuple[Decision | None, str]:
        """For a user who holds no token: (no code needed while a grace of one of her groups
        lasts, else None; what to add to the refusal when her grace has ended)."""
        if not self.config.graces:
            return None, ""
        mine = {normalise_dn(g) for g in groups}
        grace, ended = grace_for(self.config.graces, mine, now)
        if grace is not None:
            return Decision(False, grace.reason()), ""
        return None, f" ({ended.ended()})" if ended else ""


def channel_refusal(
    channel: Channel, groups: tuple[str, ...], unreadable: tuple[str, ...] = ()
) -> str | None:
    """Why the channel's access rules refuse a user with these ``groups`` (None: allowed).

    Deny wins over allow.  A group whose membership could not be read (``unreadable``)
    counts as one the user is in for a deny rule and as one she is not in for an allow
    rule: both refuse (fail closed)."""
    if not channel.restricted:
        return None
    mine = {normalise_dn(g) for g in groups}
    unknown = {normalise_dn(g) for g in unreadable}
    where = f"not allowed on {channel.kind} {channel.name or channel.front_end}"
    for group in channel.deny_groups:
        key = normalise_dn(group)
        if key in unknown:
            return f"{where}: membership of {group} cannot be read"
        if key in mine:
            return f"{where}: member of {group}"
    if channel.allow_groups and not any(
        (key := normalise_dn(g)) in mine and key not in unknown for g in channel.allow_groups
    ):
        unread = [g for g in channel.allow_groups if normalise_dn(g) in unknown]
        why = f" (membership of {' and '.join(unread)} cannot be read)" if unread else ""
        return f"{where}: not a member of {' or '.join(channel.allow_groups)}{why}"
    return None


def password_only_enrollment(
    network: str | None, now: float, networks: tuple[Network, ...], until: float | None
) -> bool:
    """Whether a user without a token may enroll a first device with the password alone from
    ``network`` (None: an address that grants nothing): from the configured networks, or
    from anywhere until the rollout window ends (``[web]
    password_only_enrollment_networks`` / ``password_only_enrollment_until``)."""
    if until is not None and now < until:
        return True
    return in_networks(network, networks)
