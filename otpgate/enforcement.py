"""Where a second factor is enforced, and what of the rollout needs the admin's eye (pure):
report-only listeners and NASes, exemptions and graces that have ended or end soon.  Said
loudly by ``check-config``, ``doctor``, the startup log and ``/metrics``
(``otpgate_enforced``): report-only mode is never the default, and must never be forgotten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from otpgate.config import Config

SOON = 14 * 86400.0
"""An exemption or grace that ends within this is mentioned (so it can be renewed or let go)."""


@dataclass(frozen=True)
class Way:
    """One way in: an LDAP listener or a NAS, and whether its logins are enforced."""

    front_end: str
    """"ldap" or "radius"."""
    where: str
    """The listen string or the NAS's name (or network)."""
    enforced: bool
    note: str = ""


def ways_in(config: Config) -> list[Way]:
    ways = [
        Way("ldap", listen, config.ldap_proxy.rules_for(listen).enforce)
        for listen in config.ldap_proxy.listen
    ]
    for client in config.radius.clients if config.radius.listen else ():
        note = ""
        if not client.enforce and client.mode == "otp-only":
            note = "otp-only mode carries no password: its codes are checked all the same"
        elif not client.enforce and (client.allow_chap or client.allow_mschapv2):
            note = "CHAP and MS-CHAPv2 logins carry no password: their codes are still checked"
        ways.append(Way("radius", client.nas_name, client.enforce, note))
    return ways


def warnings(config: Config, now: float | None = None) -> list[str]:
    """One line per thing the admin must know about enforcement, most urgent first."""
    now = time.time() if now is None else now
    lines = []
    for way in ways_in(config):
        if not way.enforced:
            kind = "LDAP listener" if way.front_end == "ldap" else "RADIUS client"
            line = (
                f"REPORT-ONLY: {kind} {way.where}: enforce = false, a correct password alone "
                "is accepted (the audit says what enforcement would do)"
            )
            lines.append(line + (f"; {way.note}" if way.note else ""))
    policy = config.policy
    for i, exemption in enumerate(policy.exemptions):
        if exemption.until is None:
            continue
        if exemption.until <= now:
            lines.append(
                f"policy.exempt[{i}] ({exemption.label}) ended {exemption.until_text}: it "
                "exempts nobody; remove it"
            )
        elif exemption.until - now < SOON:
            lines.append(f"policy.exempt[{i}] ({exemption.label}) ends {exemption.until_text}")
    for i, grace in enumerate(policy.graces):
        if grace.until <= now:
            lines.append(f"policy.grace[{i}] ({grace.group}) ended {grace.until_text}; remove it")
        elif grace.until - now < SOON:
            lines.append(f"policy.grace[{i}] ({grace.group}) ends {grace.until_text}")
    return lines
