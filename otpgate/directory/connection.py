"""One LDAP connection on ldaptor, with verified TLS, timeouts and plain results.

ldaptor's own ``startTLS()`` verifies nothing, so TLS here is always started
with ``optionsForClientTLS`` (certificate chain and host name checked against
the configured CA file, or the system trust store).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap import ldapclient
from OpenSSL import SSL
from twisted.internet import defer, protocol, ssl
from twisted.internet import error as neterror
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime

from otpgate.directory.ldapdata import (
    INVALID_CREDENTIALS,
    NO_SUCH_OBJECT,
    SCOPE_SUBTREE,
    SUCCESS,
    DirectoryError,
    DirectoryUnavailable,
    LdapUrl,
    Modification,
    SearchEntry,
)

_LOST = (
    neterror.ConnectionClosed,
    neterror.ConnectError,
    ldapclient.LDAPClientConnectionLostException,
    SSL.Error,  # certificate verification failed (surfaces on the first operation)
)


@dataclass(frozen=True)
class TlsSettings:
    start_tls: bool = False
    ca_file: Path | None = None

    def client_options(self, host: str) -> Any:
        if self.ca_file is not None:
            trust = ssl.Certificate.loadPEM(self.ca_file.read_bytes())
            return ssl.optionsForClientTLS(host, trustRoot=trust)
        return ssl.optionsForClientTLS(host)


class LdapConnection:
    """A connected ldaptor client with per-operation timeouts."""

    def __init__(
        self, client: ldapclient.LDAPClient, url: LdapUrl, clock: IReactorTime, timeout: float
    ) -> None:
        self.client = client
        self.url = url
        self.clock = clock
        self.timeout = timeout

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def close(self) -> None:
        if self.client.connected:
            self.client.transport.loseConnection()

    async def _send(self, op: Any) -> Any:
        if not self.client.connected:
            raise DirectoryUnavailable(f"{self.url.url}: connection lost")
        d = self.client.send(op)
        d.addTimeout(self.timeout, self.clock)
        try:
            return await d
        except defer.TimeoutError as exc:
            self.close()
            raise DirectoryUnavailable(f"{self.url.url}: no answer in {self.timeout}s") from exc
        except _LOST as exc:
            raise DirectoryUnavailable(f"{self.url.url}: connection lost ({exc})") from exc

    async def simple_bind(self, dn: str, password: bytes) -> tuple[int, str]:
        """Bind; returns (resultCode, diagnostic message).  Refuses an empty password."""
        if not password:
            # An empty password is an unauthenticated bind that "succeeds" (RFC 4513 §5.1.2).
            return INVALID_CREDENTIALS, "empty password refused"
        resp = await self._send(pureldap.LDAPBindRequest(dn=dn.encode(), auth=password))
        return resp.resultCode, _text(resp.errorMessage)

    async def search(
        self,
        base: str,
        filter_: Any,
        attributes: Sequence[str],
        scope: int = SCOPE_SUBTREE,
        size_limit: int = 0,
    ) -> list[SearchEntry]:
        if not self.client.connected:
            raise DirectoryUnavailable(f"{self.url.url}: connection lost")
        entries: list[SearchEntry] = []
        done: defer.Deferred[Any] = defer.Deferred()

        def handler(msg: Any) -> bool:
            if isinstance(msg, pureldap.LDAPSearchResultEntry):
                attrs: dict[str, list[bytes]] = {}
                for name, values in msg.attributes:
                    attrs[_text(name).lower()] = [_bytes(v) for v in values]
                entries.append(SearchEntry(_text(msg.objectName), attrs))
                return False
            if isinstance(msg, pureldap.LDAPSearchResultDone):
                done.callback(msg)
                return True
            return False  # references are ignored: state lives on the pinned server

        op = pureldap.LDAPSearchRequest(
            baseObject=base.encode(),
            scope=scope,
            derefAliases=0,
            sizeLimit=size_limit,
            timeLimit=int(self.timeout) + 1,
            typesOnly=0,
            filter=filter_,
            attributes=[a.encode() for a in attributes],
        )
        sent = self.client.send_multiResponse(op, handler)
        # ldaptor fires `sent` only with a failure (the connection was lost): pass it on.
        sent.addErrback(lambda failure: None if done.called else done.errback(failure))
        done.addTimeout(self.timeout, self.clock)
        try:
            result = await done
        except _LOST as exc:
            raise DirectoryUnavailable(f"{self.url.url}: connection lost ({exc})") from exc
        except defer.TimeoutError as exc:
            self.close()
            raise DirectoryUnavailable(f"{self.url.url}: no answer in {self.timeout}s") from exc
        if result.resultCode not in (SUCCESS,):
            if result.resultCode == NO_SUCH_OBJECT:
                return []
            raise DirectoryError(
                f"search under {base} failed: {result.resultCode} {_text(result.errorMessage)}",
                result.resultCode,
            )
        return entries

    async def modify(self, dn: str, changes: Sequence[Modification]) -> tuple[int, str]:
        """One Modify operation (applied atomically by the server); returns (code, message)."""
        mods = [
            pureber.BERSequence(
                [
                    pureber.BEREnumerated(change.op),
                    pureber.BERSequence(
                        [
                            pureldap.LDAPAttributeDescription(change.attribute),
                            pureber.BERSet([pureldap.LDAPString(v) for v in change.values]),
                        ]
                    ),
                ]
            )
            for change in changes
        ]
        resp = await self._send(pureldap.LDAPModifyRequest(object=dn.encode(), modification=mods))
        return resp.resultCode, _text(resp.errorMessage)

    async def add(self, dn: str, attributes: dict[str, tuple[bytes, ...]]) -> tuple[int, str]:
        attrs = [
            (
                pureldap.LDAPAttributeDescription(name),
                pureber.BERSet([pureldap.LDAPString(v) for v in values]),
            )
            for name, values in attributes.items()
        ]
        resp = await self._send(pureldap.LDAPAddRequest(entry=dn.encode(), attributes=attrs))
        return resp.resultCode, _text(resp.errorMessage)

    async def delete(self, dn: str) -> tuple[int, str]:
        resp = await self._send(pureldap.LDAPDelRequest(entry=dn.encode()))
        return resp.resultCode, _text(resp.errorMessage)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _bytes(value: Any) -> bytes:
    raw = getattr(value, "value", value)
    return raw if isinstance(raw, bytes) else str(raw).encode("utf-8")


class _ClientFactory(protocol.Factory):
    protocol = ldapclient.LDAPClient


async def connect(reactor: Any, url: LdapUrl, tls: TlsSettings, timeout: float) -> LdapConnection:
    """Open a connection (LDAPS, or LDAP with verified StartTLS when configured)."""
    endpoint: Any = HostnameEndpoint(reactor, url.host, url.port, timeout=timeout)
    if url.ldaps:
        endpoint = wrapClientTLS(tls.client_options(url.host), endpoint)
    try:
        client = await endpoint.connect(_ClientFactory())
    except Exception as exc:
        raise DirectoryUnavailable(f"{url.url}: cannot connect: {exc}") from exc
    conn = LdapConnection(client, url, reactor, timeout)
    if tls.start_tls and not url.ldaps:
        resp = await conn._send(pureldap.LDAPStartTLSRequest())
        if resp.resultCode != SUCCESS:
            conn.close()
            raise DirectoryError(
                f"{url.url}: StartTLS refused: {resp.resultCode} {_text(resp.errorMessage)}",
                resp.resultCode,
            )
        client.transport.startTLS(tls.client_options(url.host))
    return conn
