"""Who needs an OTP: exempt accounts, required groups, trusted networks, admins."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from otpgate.auth.config import PolicyConfig
from otpgate.auth.requests import Channel
from otpgate.configfile import Network
from otpgate.dn import MAX_MEMO_DN, dn_key, normalise_dn


@dataclass(frozen=True)
class Decision:
    needs_otp: bool
    reason: str


class Policy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._exempt = {normalise_dn(d) for d in config.exempt_dns}
        self._subtrees = tuple(key for d in config.exempt_subtrees if (key := dn_key(d)))
        self._required = {normalise_dn(g) for g in config.require_otp_groups}
        self._admins = {normalise_dn(g) for g in config.admin_groups}
        # Asked for every login with the same few thousand DNs: remembered per policy.
        self._exempt_memo = lru_cache(maxsize=4096)(self._is_exempt)

    def is_exempt(self, dn: str) -> bool:
        """``dn`` is an exempt DN, or lies below an exempt subtree (compared RDN by RDN)."""
        if not self._exempt and not self._subtrees:
            return False
        return self._exempt_memo(dn) if len(dn) <= MAX_MEMO_DN else self._is_exempt(dn)

    def _is_exempt(self, dn: str) -> bool:
        key = dn_key(dn)
        if key is None:
            return False
        if ",".join(key) in self._exempt:
            return True
        return any(len(key) > len(sub) and key[-len(sub) :] == sub for sub in self._subtrees)

    def decide(self, dn: str, groups: tuple[str, ...], client_ip: str | None) -> Decision:
        groups_norm = {normalise_dn(g) for g in groups}
        is_admin = bool(self._admins & groups_norm)
        if is_admin and self.config.admins_always_need_otp:
            return Decision(True, "administrator")
        if self.is_exempt(dn):
            return Decision(False, "exempt account")
        if client_ip is not None and self._trusted(client_ip):
            return Decision(False, "trusted network")
        if self._required and not (self._required & groups_norm):
            return Decision(False, "not in a group that requires an OTP")
        return Decision(True, "policy")

    def _trusted(self, client_ip: str) -> bool:
        return in_networks(client_ip, self.config.trusted_networks)


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


def in_networks(address: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether ``address`` (an IP address as text) lies in one of ``networks``."""
    if address is None or not networks:
        return False
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(addr in net for net in networks)


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
