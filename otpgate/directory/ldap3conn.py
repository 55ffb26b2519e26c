"""The CLI's connections to the directory, over ldap3 (``sync.py`` drives the state engine
over them).

Connections always verify TLS (``ssl.CERT_REQUIRED``, the configured CA file or the
system store, host name checked): LDAPS, or StartTLS before the bind; plain ``ldap://``
only to loopback.  Reads use the configured URLs in order (failover); OTP state goes to the
write server: ``write_url``, or AD's PDC emulator when it is ``"discover"`` (used only
while it says it holds the role: checked like the gateway checks, ``discovery.py``), or
the URLs in order when it is unset.  A pinned server that is down fails closed.  Referrals
are never followed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap3_errors  # type: ignore[import-untyped]

from otpgate.directory.config import DirectoryConfig, cleartext_ldap_problem
from otpgate.directory.discovery import NotThePdc, Read, confirm_pdc, pdc_emulator
from otpgate.directory.drive import run_steps
from otpgate.directory.ldapdata import (
    NO_SUCH_OBJECT,
    SCOPE_BASE,
    SCOPE_SUBTREE,
    SUCCESS,
    LdapUrl,
    Modification,
    SearchEntry,
)
from otpgate.errors import DirectoryError, DirectoryUnavailable

T = TypeVar("T")

SIZE_LIMIT_EXCEEDED = 4
_SCOPES = {SCOPE_BASE: ldap3.BASE, SCOPE_SUBTREE: ldap3.SUBTREE}
_OPS = {
    Modification.ADD: ldap3.MODIFY_ADD,
    Modification.DELETE: ldap3.MODIFY_DELETE,
    Modification.REPLACE: ldap3.MODIFY_REPLACE,
}
# ldap3 raises these when the server cannot be reached or the connection breaks.
_UNREACHABLE = (
    ldap3_errors.LDAPSocketOpenError,
    ldap3_errors.LDAPSocketReceiveError,
    ldap3_errors.LDAPSocketSendError,
    ldap3_errors.LDAPSessionTerminatedByServerError,
    ldap3_errors.LDAPResponseTimeoutError,
    ldap3_errors.LDAPCommunicationError,
    ldap3_errors.LDAPStartTLSError,
    ldap3_errors.LDAPSSLConfigurationError,
)
PAGE_SIZE = 500


def tls_settings(config: DirectoryConfig) -> ldap3.Tls:
    """Verified TLS: the configured CA (or the system store), host name checked."""
    return ldap3.Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=str(config.ca_file) if config.ca_file is not None else None,
        version=ssl.PROTOCOL_TLS_CLIENT,
    )


def _modify_dict(changes: Sequence[Modification]) -> dict[str, list[tuple[Any, list[bytes]]]]:
    """ldap3's form of one Modify.  Changes of one attribute stay in their order; an
    attribute may not come back after another one (ldap3 groups by attribute)."""
    out: dict[str, list[tuple[Any, list[bytes]]]] = {}
    last: str | None = None
    for change in changes:
        key = change.attribute
        if key in out and last != key:
            raise ValueError(f"Modify plan touches {key} twice, apart: ldap3 cannot send that")
        out.setdefault(key, []).append((_OPS[change.op], list(change.values)))
        last = key
    return out


class SyncConnection:
    """One bound ldap3 connection with plain results: (code, message) and SearchEntry."""

    def __init__(self, conn: ldap3.Connection, url: LdapUrl, tls: str) -> None:
        self.conn = conn
        self.url = url
        self.tls = tls
        """How the connection is protected: "ldaps", "starttls" or "plain" (loopback only)."""

    def _call(self, what: str, func: Callable[[], Any]) -> dict[str, Any]:
        try:
            func()
        except _UNREACHABLE as exc:
            raise DirectoryUnavailable(f"{self.url.url}: {what}: connection lost ({exc})") from exc
        except ldap3_errors.LDAPException as exc:  # e.g. a filter ldap3 cannot parse
            raise DirectoryError(f"{self.url.url}: {what}: {exc}") from exc
        result: dict[str, Any] = self.conn.result or {}
        return result

    @staticmethod
    def _code(result: dict[str, Any]) -> tuple[int, str]:
        return int(result.get("result", 1)), str(result.get("message") or result.get("description"))

    def search(
        self,
        base: str,
        filter_text: str,
        attributes: Sequence[str],
        scope: int = SCOPE_SUBTREE,
        size_limit: int = 0,
        controls: Any = None,
    ) -> list[SearchEntry]:
        result = self._call(
            f"search {base}",
            lambda: self.conn.search(
                base,
                filter_text,
                search_scope=_SCOPES[scope],
                attributes=list(attributes),
                size_limit=size_limit,
                controls=controls,
            ),
        )
        code, message = self._code(result)
        if code == NO_SUCH_OBJECT:
            return []
        if code not in (SUCCESS, SIZE_LIMIT_EXCEEDED):
            raise DirectoryError(f"search under {base} failed: {code} {message}", code)
        return [_entry(r) for r in self.conn.response or () if r.get("type") == "searchResEntry"]

    def paged_search(
        self, base: str, filter_text: str, attributes: Sequence[str]
    ) -> Iterator[SearchEntry]:
        """Every entry of a subtree search, a page at a time (AD caps results per page)."""
        cookie: Any = None
        while True:
            result = self._call(
                f"search {base}",
                functools.partial(
                    self.conn.search,
                    base,
                    filter_text,
                    search_scope=ldap3.SUBTREE,
                    attributes=list(attributes),
                    paged_size=PAGE_SIZE,
                    paged_cookie=cookie,
                ),
            )
            code, message = self._code(result)
            if code == NO_SUCH_OBJECT:
                return
            if code != SUCCESS:
                raise DirectoryError(f"search under {base} failed: {code} {message}", code)
            for r in list(self.conn.response or ()):
                if r.get("type") == "searchResEntry":
                    yield _entry(r)
            controls = result.get("controls") or {}
            paged = controls.get("1.2.840.113556.1.4.319", {}).get("value", {})
            cookie = paged.get("cookie")
            if not cookie:
                return

    def modify(self, dn: str, changes: Sequence[Modification]) -> tuple[int, str]:
        """One Modify operation (applied atomically by the server)."""
        mods = _modify_dict(changes)
        return self._code(self._call(f"modify {dn}", lambda: self.conn.modify(dn, mods)))

    def add(self, dn: str, attributes: dict[str, tuple[bytes, ...]]) -> tuple[int, str]:
        attrs = {name: list(values) for name, values in attributes.items()}
        return self._code(self._call(f"add {dn}", lambda: self.conn.add(dn, attributes=attrs)))

    def delete(self, dn: str) -> tuple[int, str]:
        return self._code(self._call(f"delete {dn}", lambda: self.conn.delete(dn)))

    def root_dse(self, attributes: Sequence[str]) -> SearchEntry | None:
        found = self.search("", "(objectClass=*)", attributes, scope=SCOPE_BASE)
        return found[0] if found else None

    def close(self) -> None:
        with contextlib.suppress(*_UNREACHABLE):  # already gone: nothing to release
            self.conn.unbind()


def _entry(response: dict[str, Any]) -> SearchEntry:
    raw = response.get("raw_attributes") or {}
    attrs: dict[str, list[bytes]] = {}
    for name, values in raw.items():
        # ldap3 names ranged AD values "member;range=0-1499"; otpgate's attributes are small.
        attrs[name.split(";", 1)[0].lower()] = [bytes(v) for v in values]
    return SearchEntry(str(response.get("dn", "")), attrs)


def connect(
    url: LdapUrl,
    config: DirectoryConfig,
    bind_dn: str | None,
    password: str | None,
    get_info: str = ldap3.NONE,
) -> SyncConnection:
    """Connect to ``url`` (LDAPS, or StartTLS when configured; plain LDAP only to a
    loopback host, the gateway's rule) and bind; ``bind_dn=None`` binds as the service
    account."""
    problem = cleartext_ldap_problem(url.url, config.start_tls)
    if problem is not None:
        raise DirectoryError(f"refusing to send credentials without TLS: {problem}")
    server = ldap3.Server(
        url.host,
        port=url.port,
        use_ssl=url.ldaps,
        tls=tls_settings(config),
        get_info=get_info,
        connect_timeout=config.timeout,
    )
    user = config.bind_dn if bind_dn is None else bind_dn
    secret = config.bind_password if bind_dn is None else (password or "")
    if not secret:
        raise DirectoryError(f"no password for {user}: otpgate never binds anonymously")
    conn = ldap3.Connection(
        server,
        user=user,
        password=secret,
        auto_bind=ldap3.AUTO_BIND_NONE,
        auto_referrals=False,
        raise_exceptions=False,
        receive_timeout=math.ceil(config.timeout),  # ldap3 packs it as whole seconds
        read_only=False,
    )
    how = "ldaps" if url.ldaps else "starttls" if config.start_tls else "plain"
    wrapped = SyncConnection(conn, url, how)
    try:
        conn.open(read_server_info=False)
        if how == "starttls" and not conn.start_tls(read_server_info=False):
            conn.unbind()
            code, message = SyncConnection._code(conn.result or {})
            raise DirectoryError(f"{url.url}: StartTLS refused: {code} {message}", code)
        if not conn.bind(read_server_info=get_info != ldap3.NONE):
            code, message = SyncConnection._code(conn.result or {})
            conn.unbind()
            raise DirectoryError(f"{url.url}: bind as {user} failed: {code} {message}", code)
    except _UNREACHABLE as exc:
        raise DirectoryUnavailable(f"{url.url}: cannot connect: {exc}") from exc
    except ldap3_errors.LDAPException as exc:
        raise DirectoryError(f"{url.url}: {exc}") from exc
    return wrapped


class SyncDirectory:
    """Service-account connections: reads with failover, OTP state on the write server."""

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config
        self._read: SyncConnection | None = None
        self._write: SyncConnection | None = None
        self.write_urls: list[str] | None = None
        """Where OTP state goes, once known."""
        self._confirmed_at = 0.0
        """With "discover": when the write server last showed it holds the PDC emulator role."""

    def open_first(
        self, urls: Sequence[str], bind_dn: str | None = None, password: str | None = None
    ) -> SyncConnection:
        errors = []
        for text in urls:
            try:
                return connect(LdapUrl.parse(text), self.config, bind_dn, password)
            except DirectoryUnavailable as exc:
                errors.append(str(exc))
        raise DirectoryUnavailable("no directory server answered: " + "; ".join(errors))

    def read(self) -> SyncConnection:
        if self._read is None:
            self._read = self.open_first(self.config.urls)
        return self._read

    def resolve_write_urls(self) -> list[str]:
        if self.write_urls is None:
            wanted = self.config.write_url
            if wanted == "discover":
                self.write_urls = [discover_pdc(self.read(), self.config)]
            elif wanted:
                self.write_urls = [wanted]
            else:
                self.write_urls = list(self.config.urls)
        return self.write_urls

    def write(self) -> SyncConnection:
        if self.config.write_url == "discover":
            return self._pdc()
        if self._write is None:
            urls = self.resolve_write_urls()
            if self.config.write_url is None and self._read is not None:
                self._write = self._read  # no pinning: the read connection will do
            else:
                self._write = self.open_first(urls)
        return self._write

    def _pdc(self) -> SyncConnection:
        """The connection to the PDC emulator, used only while it says it holds the role:
        checked when it opens and once ``pdc_check_seconds`` old.  When the role has moved,
        discovery runs once more; a server that fails again fails the command."""
        fresh = time.monotonic() - self._confirmed_at < self.config.pdc_check_seconds
        if self._write is not None and fresh:
            return self._write
        try:
            return self._confirmed_pdc()
        except NotThePdc:
            return self._confirmed_pdc()

    def _confirmed_pdc(self) -> SyncConnection:
        if self._write is None:
            self._write = self.open_first(self.resolve_write_urls())
        try:
            confirm_pdc_sync(self._write, self.config)
        except NotThePdc:
            self._write.close()
            self._write, self.write_urls = None, None
            raise
        self._confirmed_at = time.monotonic()
        return self._write

    def close(self) -> None:
        for conn in {id(c): c for c in (self._read, self._write) if c is not None}.values():
            conn.close()
        self._read = self._write = None


def _reader(conn: SyncConnection) -> Callable[[Read], SearchEntry | None]:
    def read(request: Read) -> SearchEntry | None:
        dn, attributes = request
        found = conn.search(dn, "(objectClass=*)", list(attributes), scope=SCOPE_BASE)
        return found[0] if found else None

    return read


def discover_pdc(conn: SyncConnection, config: DirectoryConfig) -> str:
    """The URL of AD's PDC emulator, found like the gateway finds it (``discovery.py``)."""
    return run_steps(pdc_emulator(config.base_dn, conn.url.url, config.urls[0]), _reader(conn)).url


def confirm_pdc_sync(conn: SyncConnection, config: DirectoryConfig) -> str:
    """``conn``'s server holds the PDC emulator role now (its NTDS DN), else NotThePdc."""
    return run_steps(confirm_pdc(config.base_dn, conn.url.url), _reader(conn))
