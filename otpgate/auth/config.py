"""The pipeline's settings: ``[otp]``, ``[lockout]`` and ``[policy]``."""

from __future__ import annotations

from dataclasses import dataclass

from otpgate.auth.exemptconfig import parse_exemptions, parse_graces
from otpgate.auth.exemptions import Exemption, Grace
from otpgate.configfile import Network, Section, non_negative, positive
from otpgate.errors import ConfigError
from otpgate.otp.oath import (
    DEFAULT_HOTP_LOOK_AHEAD,
    DEFAULT_PERIOD,
    DEFAULT_TOTP_WINDOW,
    Algorithm,
    check_digits,
    check_look_ahead,
    check_period,
    check_totp_window,
)


@dataclass(frozen=True)
class OtpConfig:
    totp_window: int = DEFAULT_TOTP_WINDOW
    hotp_look_ahead: int = DEFAULT_HOTP_LOOK_AHEAD
    digits: int = 6
    algorithm: Algorithm = Algorithm.SHA1
    period: int = DEFAULT_PERIOD
    issuer: str = "otpgate"
    scratch_low_threshold: int = 10
    max_tokens_per_user: int = 5
    otp_delimiter: str = ""
    """Where password and code meet in what a user types ("": by the code lengths of the
    user's own tokens).  Every front end that takes password+code uses it."""
    sent_code_lifetime: int = 300
    """Seconds a code sent by e-mail or SMS stays valid (``[delivery] code_lifetime``)."""


@dataclass(frozen=True)
class CodeRules:
    """When codes are sent by e-mail or SMS, and how often (``[delivery]``)."""

    lifetime: int = 300
    """Seconds a sent code stays valid."""
    digits: int = 6
    """Digits of the codes of a new e-mail/SMS token (6 to 8)."""
    cooldown: int = 60
    """Seconds between two sends to one user (every gateway: kept in the use state)."""
    per_hour: int = 6
    """Sends to one user in any hour."""
    per_minute: int = 60
    """Sends by one gateway process in any minute, all users together."""
    triggers: tuple[tuple[str, str], ...] = (("sms", "sms"), ("email", "email"))
    """(word, channel): the password followed by ``otp_delimiter`` and the word asks for a
    code by that channel (an LDAP bind; RADIUS in append mode)."""


@dataclass(frozen=True)
class LockoutConfig:
    max_failures: int = 5
    duration_minutes: int = 15


@dataclass(frozen=True)
class PolicyConfig:
    exempt_dns: tuple[str, ...] = ()
    exempt_subtrees: tuple[str, ...] = ()
    exemptions: tuple[Exemption, ...] = ()
    """``[[policy.exempt]]``: patterns, groups, networks per listener/NAS, expiry dates
    (``exemptions.py``); ``exempt_dns``/``exempt_subtrees`` are the same without them."""
    graces: tuple[Grace, ...] = ()
    """``[[policy.grace]]``: members of a group without a token need no code until a date."""
    require_otp_groups: tuple[str, ...] = ()
    """Empty: every non-exempt user needs an OTP."""
    trusted_networks: tuple[Network, ...] = ()
    admin_groups: tuple[str, ...] = ()
    admins_always_need_otp: bool = True
    allow_sasl_for_exempt: bool = False
    """Forward SASL binds named as an exempt account; the bound identity is then confirmed
    with Who Am I? (RFC 4532) and anything else is refused (docs/SECURITY.md)."""
    max_name_length: int = 4096
    """Longer login names (bind DNs, SASL names, RADIUS and portal user names) are refused
    before anything parses them: real DNs are far shorter, and a 256-KiB name is only ever
    an attempt to make the gateway work."""


def check_delimiter(delimiter: str) -> None:
    if len(delimiter) > 1:
        raise ValueError(f"one character or empty, not {delimiter!r}")


def check_name_length(length: int) -> None:
    if not 256 <= length <= 65536:
        raise ValueError(f"between 256 and 65536 characters, not {length}")


def parse_otp(sec: Section, delimiter: str | None = None) -> OtpConfig:
    """``delimiter``: the deprecated ``[ldap_proxy] otp_delimiter``, if it was set."""
    if delimiter is not None and sec.given("otp_delimiter"):
        raise ConfigError(
            f"{sec.key('otp_delimiter')}: also set as [ldap_proxy].otp_delimiter (deprecated): "
            "keep only this one"
        )
    result = OtpConfig(
        totp_window=sec.value(OtpConfig, "totp_window", int, check_totp_window),
        hotp_look_ahead=sec.value(OtpConfig, "hotp_look_ahead", int, check_look_ahead),
        digits=sec.value(OtpConfig, "digits", int, check_digits),
        algorithm=Algorithm(
            sec.choice("algorithm", tuple(a.value for a in Algorithm), OtpConfig.algorithm.value)
        ),
        period=sec.value(OtpConfig, "period", int, check_period),
        issuer=sec.value(OtpConfig, "issuer", str),
        scratch_low_threshold=sec.value(OtpConfig, "scratch_low_threshold", int, non_negative),
        max_tokens_per_user=sec.value(OtpConfig, "max_tokens_per_user", int, positive),
        otp_delimiter=(
            delimiter
            if delimiter is not None
            else sec.value(OtpConfig, "otp_delimiter", str, check_delimiter)
        ),
    )
    sec.done()
    return result


def parse_lockout(sec: Section) -> LockoutConfig:
    result = LockoutConfig(
        max_failures=sec.value(LockoutConfig, "max_failures", int, positive),
        duration_minutes=sec.value(LockoutConfig, "duration_minutes", int, positive),
    )
    sec.done()
    return result


def parse_policy(sec: Section) -> PolicyConfig:
    result = PolicyConfig(
        exempt_dns=sec.strings("exempt_dns"),
        exempt_subtrees=sec.strings("exempt_subtrees"),
        exemptions=parse_exemptions(sec),
        graces=parse_graces(sec),
        require_otp_groups=sec.strings("require_otp_groups"),
        trusted_networks=sec.networks("trusted_networks"),
        admin_groups=sec.strings("admin_groups"),
        admins_always_need_otp=sec.value(PolicyConfig, "admins_always_need_otp", bool),
        allow_sasl_for_exempt=sec.value(PolicyConfig, "allow_sasl_for_exempt", bool),
        max_name_length=sec.value(PolicyConfig, "max_name_length", int, check_name_length),
    )
    sec.done()
    return result
