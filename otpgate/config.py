"""Configuration: one TOML file loaded into typed, validated, immutable objects.

Each section is parsed beside the code it configures (``directory/config.py``,
``auth/config.py``, ``ldapproxy/config.py``, ``radius/config.py``, ``web/config.py``,
``outofband/config.py``); this module puts them together.  Every error is a
:class:`ConfigError` whose message names the key (as ``[section].key``) and says what is
allowed; nothing else is raised for a bad file.  A key that still works but moved is
reported in ``Config.deprecations`` (printed by ``otpgate check-config`` and logged when
the gateway starts).  No global state: ``load_config(path)`` returns a :class:`Config`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from otpgate.auditconfig import LoggingConfig, parse_logging
from otpgate.auth.appconfig import AppPasswordConfig, check_app_places, parse_app_passwords
from otpgate.auth.config import (
    LockoutConfig,
    OtpConfig,
    PolicyConfig,
    parse_lockout,
    parse_otp,
    parse_policy,
)
from otpgate.auth.exemptconfig import check_scopes
from otpgate.auth.settings import AuthSettings
from otpgate.configfile import (
    ListenAddress,
    Network,
    Section,
    parse_listen,
)
from otpgate.directory.config import (
    DirectoryConfig,
    MappedAttribute,
    cleartext_ldap_problem,
    parse_directory,
)
from otpgate.directory.profiles import KNOWN_ATTRIBUTES, PROFILES, Profile
from otpgate.errors import ConfigError
from otpgate.ldapproxy.config import (
    DEPRECATED_DELIMITER,
    LdapProxyConfig,
    deprecated_delimiter,
    parse_ldap_proxy,
)
from otpgate.outofband.config import DeliveryConfig, parse_delivery
from otpgate.radius.config import (
    RADIUS_MODES,
    RadiusClient,
    RadiusConfig,
    check_reply_sources,
    parse_radius,
    parse_radius_listen,
)
from otpgate.web.config import WebConfig, parse_web

__all__ = [
    "KNOWN_ATTRIBUTES",
    "PROFILES",
    "RADIUS_MODES",
    "AuthSettings",
    "Config",
    "ConfigError",
    "DeliveryConfig",
    "DirectoryConfig",
    "LdapProxyConfig",
    "ListenAddress",
    "LockoutConfig",
    "LoggingConfig",
    "MappedAttribute",
    "Network",
    "OtpConfig",
    "PolicyConfig",
    "Profile",
    "RadiusClient",
    "RadiusConfig",
    "WebConfig",
    "auth_settings",
    "cleartext_ldap_problem",
    "load_config",
    "parse_config",
    "parse_listen",
    "parse_radius_listen",
]


@dataclass(frozen=True)
class Config:
    directory: DirectoryConfig
    keyring: Path
    otp: OtpConfig = field(default_factory=OtpConfig)
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ldap_proxy: LdapProxyConfig = field(default_factory=LdapProxyConfig)
    radius: RadiusConfig = field(default_factory=RadiusConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    web: WebConfig = field(default_factory=WebConfig)
    delivery: DeliveryConfig | None = None
    """``[delivery]``: e-mail and SMS gateways; None: nothing is ever sent."""
    app_passwords: AppPasswordConfig = field(default_factory=AppPasswordConfig)
    deprecations: tuple[str, ...] = ()
    """Keys that still work but have moved: one line each, to show the operator."""


def auth_settings(config: Config) -> AuthSettings:
    """What the pipeline needs of ``config`` (``auth/settings.py``)."""
    return AuthSettings(
        otp=config.otp,
        lockout=config.lockout,
        policy=config.policy,
        bind_cache_seconds=config.ldap_proxy.bind_cache_seconds,
        failover_replay_seconds=config.radius.failover_replay_seconds,
        helpdesk_groups=config.web.helpdesk_groups,
        enrollment_networks=config.web.password_only_enrollment_networks,
        enrollment_until=config.web.password_only_enrollment_until,
        scratch_warning=config.delivery is not None and config.delivery.scratch_warning,
        codes=config.delivery.codes if config.delivery is not None else None,
        app_passwords=config.app_passwords,
    )


def membership_groups(config: Config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(groups, cautious): every group a login or the portal asks about, whose membership
    the store resolves with each entry (``engine.memberships``), and those a user counts as
    a member of when it cannot be read (they add a requirement: required and admin groups).
    The RADIUS reply rules' groups and the NASes' and listeners' allow/deny groups are asked
    about too; the access rules refuse a user whose membership cannot be read
    (``UserEntry.unknown_groups``, ``policy.channel_refusal``)."""
    policy = config.policy
    cautious = (*policy.require_otp_groups, *policy.admin_groups)
    rules: list[str] = []
    for client in config.radius.clients:
        rules += (*client.allow_groups, *client.deny_groups)
    for listener in config.ldap_proxy.listener_rules:
        rules += (*listener.allow_groups, *listener.deny_groups)
    # Exemption and grace groups: a membership that cannot be read exempts nobody.
    exempting = [e.value for e in policy.exemptions if e.kind == "group"]
    exempting += [g.group for g in policy.graces]
    groups = (
        *cautious, *config.web.helpdesk_groups, *config.radius.reply_groups, *rules, *exempting
    )
    return groups, cautious


def parse_config(doc: Mapping[str, Any], base: Path) -> Config:
    """Build a Config from a parsed TOML document; relative paths are relative to ``base``."""
    top = Section(doc, "")
    directory = parse_directory(top.sub("directory"), base)
    vault = top.sub("vault")
    keyring = base / vault.require("keyring", str, "the path of the keyring file (otpgate keygen)")
    vault.done()
    proxy_section = top.sub("ldap_proxy")
    delimiter = deprecated_delimiter(proxy_section)
    config = Config(
        directory=directory,
        keyring=keyring,
        otp=parse_otp(top.sub("otp"), delimiter),
        lockout=parse_lockout(top.sub("lockout")),
        policy=parse_policy(top.sub("policy")),
        ldap_proxy=parse_ldap_proxy(proxy_section, base),
        radius=parse_radius(top.sub("radius"), base),
        logging=parse_logging(top.sub("logging"), base),
        web=parse_web(top.sub("web"), base),
        delivery=parse_delivery(top.sub("delivery"), base),
        app_passwords=parse_app_passwords(top.sub("app_passwords")),
        deprecations=(DEPRECATED_DELIMITER,) if delimiter is not None else (),
    )
    top.done()
    check_reply_sources(config.radius, directory)
    nas_names = tuple(c.nas_name for c in config.radius.clients)
    check_scopes(config.policy.exemptions, config.ldap_proxy.listen, nas_names)
    modes = {c.nas_name: c.mode for c in config.radius.clients}
    check_app_places(
        config.app_passwords, config.ldap_proxy.listen, nas_names, modes,
        config.ldap_proxy.require_tls_for_binds,
    )  # fmt: skip
    if config.delivery is not None:
        lifetime = config.delivery.codes.lifetime
        config = replace(config, otp=replace(config.otp, sent_code_lifetime=lifetime))
    return config


def load_config(path: Path) -> Config:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_config(doc, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
