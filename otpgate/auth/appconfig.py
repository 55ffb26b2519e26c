"""``[app_passwords]``: where app passwords may be used, and how many a user may hold.

Off unless the admin names the LDAP listeners or RADIUS clients that take them: an app
password is a static secret in place of password + code, so each place that accepts one is
a decision (docs/APP-PASSWORDS.md).  A user's app password is scoped to some of these;
one the admin removes from here stops working everywhere it was scoped to.
"""

from __future__ import annotations

from dataclasses import dataclass

from otpgate.apppass import MAX_PER_USER, among
from otpgate.auth.exemptconfig import check_places
from otpgate.configfile import Section, is_loopback_host, parse_listen
from otpgate.errors import ConfigError


@dataclass(frozen=True)
class AppPasswordConfig:
    listeners: tuple[str, ...] = ()
    """LDAP listeners (as in ``[ldap_proxy] listen``) that take app passwords."""
    nas: tuple[str, ...] = ()
    """RADIUS clients (their name, or network where they have none) that take them."""
    max_per_user: int = 5

    @property
    def enabled(self) -> bool:
        return bool(self.listeners or self.nas)

    def allows(self, front_end: str, where: str) -> bool:
        return among(front_end, where, self.listeners, self.nas)


def parse_app_passwords(sec: Section) -> AppPasswordConfig:
    def bounded(value: int) -> None:
        if not 1 <= value <= MAX_PER_USER:
            raise ValueError(f"{value} is not between 1 and {MAX_PER_USER}")

    config = AppPasswordConfig(
        listeners=sec.strings("listeners"),
        nas=sec.strings("nas"),
        max_per_user=sec.value(AppPasswordConfig, "max_per_user", int, bounded),
    )
    sec.done()
    return config


def check_app_places(
    config: AppPasswordConfig,
    listen: tuple[str, ...],
    nas: tuple[str, ...],
    modes: dict[str, str],
    require_tls: bool = True,
) -> None:
    """Each place named exists, and each NAS gets a password to compare (append or challenge
    mode: an otp-only NAS sends the code alone).  An app password is a static secret that
    works again and again: it never crosses the network in clear, so a listener that takes
    them needs TLS for binds (``ssl:``, or ``require_tls_for_binds``) unless it listens on
    loopback only."""
    check_places("[app_passwords]", config.listeners, config.nas, listen, nas)
    for name in config.listeners:
        address = parse_listen(name)
        if not (address.tls or require_tls or is_loopback_host(address.interface)):
            raise ConfigError(
                f"[app_passwords].listeners: {name!r} would take app passwords in clear "
                "([ldap_proxy].require_tls_for_binds is false and it is no ssl: listener "
                "on loopback): a static secret seen once works again"
            )
    for name in config.nas:
        if modes.get(name) == "otp-only":
            raise ConfigError(
                f"[app_passwords].nas: {name!r} is in otp-only mode, where the NAS checks the "
                "password itself and sends only the code: app passwords cannot work there"
            )
