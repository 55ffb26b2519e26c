"""What the pipeline needs to know of the configuration, and nothing else.

``auth/`` never reads the combined ``Config`` (which knows every front end): the gateway
builds one ``AuthSettings`` from it (``otpgate.config.auth_settings``), so the pipeline
depends on no front end and a test builds the pipeline from these few fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otpgate.auth.appconfig import AppPasswordConfig
from otpgate.auth.config import CodeRules, LockoutConfig, OtpConfig, PolicyConfig
from otpgate.configfile import Network


@dataclass(frozen=True)
class AuthSettings:
    otp: OtpConfig = field(default_factory=OtpConfig)
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    bind_cache_seconds: float = 0.0
    """``[ldap_proxy] bind_cache_seconds``: an identical rebind is accepted for this long."""
    failover_replay_seconds: float = 0.0
    """``[radius] failover_replay_seconds``: a NAS's retransmission answered again."""
    helpdesk_groups: tuple[str, ...] = ()
    """``[web] helpdesk_groups``: who the help desk is, and whom it may not change."""
    enrollment_networks: tuple[Network, ...] = ()
    """``[web] password_only_enrollment_networks``."""
    enrollment_until: float | None = None
    """``[web] password_only_enrollment_until``."""
    scratch_warning: bool = False
    """``[delivery] scratch_warning``: a scratch list falling below ``scratch_low_threshold``
    is claimed for one warning in the write that spends its code."""
    codes: CodeRules | None = None
    """``[delivery]``: the rules of codes sent by e-mail or SMS; None: none are sent."""
    app_passwords: AppPasswordConfig = field(default_factory=AppPasswordConfig)
    """``[app_passwords]``: where app passwords are taken (none: the feature is off)."""
