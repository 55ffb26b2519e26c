"""``[delivery]``: where one-time codes and scratch lists sent to a user go out.

An ordered list of e-mail servers (``[[delivery.smtp]]``), an ordered list of SMS HTTP
gateways (``[[delivery.sms_http]]``) and an optional e-mail-to-SMS gateway
(``[delivery.sms_email]``, sent through the e-mail servers).  The whole section is optional:
without it nothing is ever sent.  Secrets (SMTP password, gateway tokens) are read from
files, never written in the TOML.  Every connection leaving the machine is TLS with the
certificate and host name verified; plain SMTP or HTTP is allowed only to loopback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from otpgate.auth.config import CodeRules
from otpgate.configfile import Section, in_range, is_loopback_host, positive
from otpgate.errors import ConfigError
from otpgate.tokens import ATTRIBUTE_NAME

SMTP_SECURITY = ("starttls", "tls", "none")
HTTP_METHODS = ("POST", "PUT", "GET")
BODY_FORMATS = ("json", "form")
PLACEHOLDERS = frozenset({"to", "code", "user"})
_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_PREFIX = re.compile(r"^\+[1-9][0-9]{0,5}$")
_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_FIELD = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    security: str
    """"starttls" (required, never skipped), "tls" (SMTPS) or "none" (loopback only)."""
    sender: str
    """The From address (``from`` in the file)."""
    ca_file: Path | None = None
    """None: the system's CAs.  The certificate and the host name are always verified."""
    username: str = ""
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0

    @property
    def name(self) -> str:
        return f"smtp://{self.host}:{self.port}"


@dataclass(frozen=True)
class SmsHttpGateway:
    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Header values with ``{secret}`` already replaced: they may hold a token."""
    body: tuple[tuple[str, str], ...] = ()
    """Field name → template with ``{to}``, ``{code}``, ``{user}``."""
    format: str = "json"
    ok_status: tuple[int, ...] = (200, 201, 202)
    ok_body: str = ""
    timeout: float = 10.0
    ca_file: Path | None = None

    @property
    def name(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


@dataclass(frozen=True)
class SmsEmailGateway:
    address: str
    """A template such as "{to}@sms.example.net" (``{to}`` without a leading "+")."""
    subject: str = ""


@dataclass(frozen=True)
class DeliveryConfig:
    smtp: tuple[SmtpServer, ...] = ()
    sms_http: tuple[SmsHttpGateway, ...] = ()
    sms_email: SmsEmailGateway | None = None
    mail_attribute: str = "mail"
    """The attribute of the user's own entry that holds the e-mail address."""
    mail_subject: str = "Your one-time codes"
    scratch_warning: bool = False
    """E-mail the user once per scratch list when its codes left fall below ``[otp]
    scratch_low_threshold`` (needs ``[[delivery.smtp]]`` servers)."""
    codes: CodeRules = field(default_factory=CodeRules)
    """Sent one-time codes: lifetime, digits, the per-user and global limits, triggers."""
    sms_attributes: tuple[str, ...] = ("mobile", "telephoneNumber")
    """Where a new SMS token finds the number: the first of these the entry has."""
    sms_country_prefixes: tuple[str, ...] = ()
    """The only numbers SMS is sent to ("+49", "+4930"...): required with an SMS gateway."""

    @property
    def can_mail(self) -> bool:
        return bool(self.smtp)

    @property
    def can_sms(self) -> bool:
        return bool(self.sms_http) or self.sms_email is not None

    def can_send(self, channel: str) -> bool:
        return self.can_mail if channel == "email" else self.can_sms


def parse_delivery(sec: Section, base: Path) -> DeliveryConfig | None:
    """The ``[delivery]`` section, or None when the file has none."""
    if not sec.doc:
        sec.done()
        return None
    smtp = tuple(_smtp(s, base) for s in _tables(sec, "smtp"))
    sms_http = tuple(_sms_http(s, base) for s in _tables(sec, "sms_http"))
    sms_email = None
    if sec.given("sms_email"):
        sms_email = _sms_email(sec.sub("sms_email"))
        if not smtp:
            raise ConfigError(f"{sec.key('sms_email')}: needs [[delivery.smtp]] servers")
    attribute = sec.value(DeliveryConfig, "mail_attribute", str)
    if not _NAME.match(attribute):
        raise ConfigError(f"{sec.key('mail_attribute')}: {attribute!r} is not an attribute name")
    subject = sec.value(DeliveryConfig, "mail_subject", str)
    _one_line(sec, "mail_subject", subject)
    scratch_warning = sec.value(DeliveryConfig, "scratch_warning", bool)
    if scratch_warning and not smtp:
        raise ConfigError(
            f"{sec.key('scratch_warning')}: needs [[delivery.smtp]] servers to send the warning"
        )
    codes = _codes(sec)
    sms_attributes = sec.strings("sms_attributes", DeliveryConfig.sms_attributes)
    for name in sms_attributes:
        if not ATTRIBUTE_NAME.match(name):
            raise ConfigError(f"{sec.key('sms_attributes')}: {name!r} is not an attribute name")
    if not sms_attributes:
        raise ConfigError(f"{sec.key('sms_attributes')}: name at least one attribute")
    prefixes = sec.strings("sms_country_prefixes")
    for prefix in prefixes:
        if not _PREFIX.match(prefix):
            raise ConfigError(
                f"{sec.key('sms_country_prefixes')}: {prefix!r} is not a prefix such as \"+49\""
            )
    if (sms_http or sms_email is not None) and not prefixes:
        raise ConfigError(
            f"{sec.key('sms_country_prefixes')}: an SMS gateway needs the list of country "
            'prefixes it may send to, e.g. ["+49", "+43"] (SMS pumping: numbers anywhere '
            "else are refused)"
        )
    sec.done()
    return DeliveryConfig(
        smtp,
        sms_http,
        sms_email,
        attribute,
        subject,
        scratch_warning,
        codes,
        sms_attributes,
        prefixes,
    )


def _codes(sec: Section) -> CodeRules:
    lifetime = sec.get("code_lifetime", int, CodeRules.lifetime)
    sec.check("code_lifetime", lifetime, in_range(1, 3600))
    digits = sec.get("code_digits", int, CodeRules.digits)
    sec.check("code_digits", digits, in_range(6, 8))
    cooldown = sec.get("send_cooldown", int, CodeRules.cooldown)
    sec.check("send_cooldown", cooldown, in_range(1, 3600))
    per_hour = sec.get("sends_per_hour", int, CodeRules.per_hour)
    sec.check("sends_per_hour", per_hour, in_range(1, 100))
    per_minute = sec.get("sends_per_minute", int, CodeRules.per_minute)
    sec.check("sends_per_minute", per_minute, in_range(1, 100_000))
    triggers = []
    for channel in ("sms", "email"):
        word = sec.get(f"trigger_{channel}", str, channel)
        if word and not _WORD.match(word):
            raise ConfigError(
                f"{sec.key('trigger_' + channel)}: {word!r} must be a word starting with a "
                'letter (it can never be taken for a code), or "" to turn it off'
            )
        if word:
            triggers.append((word, channel))
    if len({w.lower() for w, _ in triggers}) != len(triggers):
        raise ConfigError(f"{sec.key('trigger_email')}: the same word as trigger_sms")
    return CodeRules(lifetime, digits, cooldown, per_hour, per_minute, tuple(triggers))


def _tables(sec: Section, name: str) -> list[Section]:
    raw = sec.raw(name)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{sec.key(name)}: expected [[{sec.path}.{name}]] tables")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{sec.key(name)}[{i}]: expected a table")
        out.append(Section(item, f"{sec.path}.{name}[{i}]"))
    return out


def _one_line(sec: Section, name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ConfigError(f"{sec.key(name)}: must be one line")


def _read_secret(sec: Section, name: str, base: Path) -> str | None:
    """The secret in the file ``name`` names (``password_file``, ``secret_file``)."""
    file_name = sec.get(name, str, "")
    if not file_name:
        return None
    path = base / file_name
    try:
        value = path.read_text("utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{sec.key(name)}: cannot read {path}: {exc.strerror}") from exc
    if not value or "\n" in value or "\r" in value:
        raise ConfigError(f"{sec.key(name)}: {path} must hold one non-empty line")
    return value


def _ca_file(sec: Section, base: Path) -> Path | None:
    text = sec.get("ca_file", str, "")
    if not text:
        return None
    path = base / text
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{sec.key('ca_file')}: cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:  # found when the config is read, not at the first send
        raise ConfigError(f"{sec.key('ca_file')}: {path} holds no PEM certificate") from exc
    if not certificates:
        raise ConfigError(f"{sec.key('ca_file')}: {path} holds no PEM certificate")
    return path


def _smtp(sec: Section, base: Path) -> SmtpServer:
    host = sec.require("host", str, "the e-mail server's host name")
    security = sec.choice("security", SMTP_SECURITY, "starttls")
    default_port = {"starttls": 587, "tls": 465, "none": 25}[security]
    port = sec.get("port", int, default_port)
    sec.check("port", port, in_range(1, 65535))
    if security == "none" and not is_loopback_host(host):
        raise ConfigError(
            f'{sec.key("security")}: "none" (plain SMTP) is allowed only to a loopback host, '
            f'not {host!r}; use "starttls" or "tls"'
        )
    sender = sec.require("from", str, "the From address, e.g. otpgate@example.org")
    _one_line(sec, "from", sender)
    if "@" not in sender:
        raise ConfigError(f"{sec.key('from')}: {sender!r} is not an e-mail address")
    username = sec.get("username", str, "")
    password = _read_secret(sec, "password_file", base)
    if sec.given("password"):
        raise ConfigError(f"{sec.key('password')}: give password_file (secrets are not kept here)")
    if bool(username) != (password is not None):
        raise ConfigError(f"{sec.key('username')}: give username and password_file together")
    if username and security == "none":
        raise ConfigError(f'{sec.key("username")}: AUTH only over TLS (security = "none")')
    timeout = sec.value(SmtpServer, "timeout", float, positive)
    server = SmtpServer(
        host, port, security, sender, _ca_file(sec, base), username, password, timeout
    )
    sec.done()
    return server


def _template(sec: Section, name: str, value: str, allowed: frozenset[str]) -> str:
    for match in _FIELD.finditer(value):
        if match.group(1) not in allowed:
            raise ConfigError(
                f"{sec.key(name)}: unknown placeholder {{{match.group(1)}}} "
                f"(allowed: {', '.join('{' + a + '}' for a in sorted(allowed))})"
            )
    try:
        value.format(**{a: "" for a in allowed})
    except (ValueError, IndexError, KeyError) as exc:
        raise ConfigError(f"{sec.key(name)}: not a valid template: {exc}") from exc
    return value


def _sms_http(sec: Section, base: Path) -> SmsHttpGateway:
    url = sec.require("url", str, "the gateway's https:// URL")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{sec.key('url')}: {url!r} is not an https:// URL with a host")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"{sec.key('url')}: http:// is allowed only to a loopback host; use https://"
        )
    method = sec.choice("method", HTTP_METHODS, "POST")
    secret = _read_secret(sec, "secret_file", base)
    headers = _headers(sec, secret)
    body_sec = sec.sub("body")
    body: list[tuple[str, str]] = []
    for key in body_sec.doc:
        value = body_sec.get(key, str, "", "a string template")
        body.append((key, _template(body_sec, key, value, PLACEHOLDERS)))
    body_sec.done()
    if not body:
        raise ConfigError(f'{sec.key("body")}: give the fields, e.g. {{ to = "{{to}}" }}')
    if not any("{code}" in v for _, v in body) and "{code}" not in url:
        raise ConfigError(f"{sec.key('body')}: no field carries {{code}}")
    fmt = sec.choice("format", BODY_FORMATS, "json")
    if method == "GET":
        raise ConfigError(f"{sec.key('method')}: GET would put the code in the URL; use POST")
    statuses = sec.get("ok_status", list, [200, 201, 202], "a list of HTTP status codes")
    if not statuses or not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
        raise ConfigError(f"{sec.key('ok_status')}: expected a list of HTTP status codes")
    ok_body = sec.value(SmsHttpGateway, "ok_body", str)
    timeout = sec.value(SmsHttpGateway, "timeout", float, positive)
    gateway = SmsHttpGateway(
        url,
        method,
        headers,
        tuple(body),
        fmt,
        tuple(statuses),
        ok_body,
        timeout,
        _ca_file(sec, base),
    )
    sec.done()
    return gateway


def _headers(sec: Section, secret: str | None) -> tuple[tuple[str, str], ...]:
    hsec = sec.sub("headers")
    out: list[tuple[str, str]] = []
    uses_secret = False
    for name in hsec.doc:
        value: Any = hsec.get(name, str, "", "a string")
        if not _NAME.match(name):
            raise ConfigError(f"{hsec.key(name)}: not a header name")
        _one_line(hsec, name, value)
        _template(hsec, name, value, frozenset({"secret"}))
        if "{secret}" in value:
            if secret is None:
                raise ConfigError(f"{hsec.key(name)}: uses {{secret}} but secret_file is not set")
            uses_secret = True
            value = value.replace("{secret}", secret)
        out.append((name, value))
    hsec.done()
    if secret is not None and not uses_secret:
        raise ConfigError(f"{sec.key('secret_file')}: no header uses {{secret}}")
    return tuple(out)


def _sms_email(sec: Section) -> SmsEmailGateway:
    address = sec.require("address", str, 'a template such as "{to}@sms.example.net"')
    _template(sec, "address", address, frozenset({"to"}))
    if "{to}" not in address or "@" not in address:
        raise ConfigError(f"{sec.key('address')}: must contain {{to}} and an @domain")
    subject = sec.value(SmsEmailGateway, "subject", str)
    _one_line(sec, "subject", subject)
    sec.done()
    return SmsEmailGateway(address, subject)
