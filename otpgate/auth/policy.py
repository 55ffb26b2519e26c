"""Who needs an OTP: exempt accounts, required groups, trusted networks, admins."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from otpgate.config import PolicyConfig


def normalise_dn(dn: str) -> str:
    """Case- and space-insensitive DN for comparisons (RDN values here are plain names)."""
    return ",".join(part.strip() for part in dn.lower().split(","))


@dataclass(frozen=True)
class Decision:
    needs_otp: bool
    reason: str


class Policy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._exempt = {normalise_dn(d) for d in config.exempt_dns}
        self._subtrees = tuple(normalise_dn(d) for d in config.exempt_subtrees)
        self._required = {normalise_dn(g) for g in config.require_otp_groups}
        self._admins = {normalise_dn(g) for g in config.admin_groups}

    def is_exempt(self, dn: str) -> bool:
        norm = normalise_dn(dn)
        return norm in self._exempt or any(norm.endswith("," + s) for s in self._subtrees)

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
        if not self.config.trusted_networks:
            return False
        try:
            addr = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(addr in net for net in self.config.trusted_networks)
