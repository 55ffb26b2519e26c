"""LDAP proxy: binds go through the OTP pipeline, everything else passes through.

Each client connection gets its own upstream connection; after a successful
bind the client's later operations run upstream as that user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors, proxybase
from twisted.internet import defer
from twisted.internet import error as neterror

from otpgate.auth.pipeline import Authenticator, AuthRequest
from otpgate.directory.ldapdata import INVALID_CREDENTIALS, UNAVAILABLE, DirectoryUnavailable

INVALID = pureldap.LDAPBindResponse(
    resultCode=INVALID_CREDENTIALS, errorMessage=b"invalid credentials"
)

UNAVAILABLE_RESPONSE = pureldap.LDAPBindResponse(
    resultCode=UNAVAILABLE, errorMessage=b"directory unavailable"
)

# Responses that end an operation (everything but search entries/references and
# intermediate responses).  ldaptor's ProxyBase only knows search and bind, so other
# operations would stay registered on the upstream connection forever.
_NOT_FINAL = (pureldap.LDAPSearchResultEntry, pureldap.LDAPSearchResultReference)


class OtpLdapProxy(proxybase.ProxyBase):  # type: ignore[misc]
    queuedRequests: list[tuple[Any, Any, Any]]

    def __init__(self, authenticator: Authenticator, connector: Callable[[], Any]) -> None:
        super().__init__()
        self.authenticator = authenticator
        self.clientConnector = connector

    def handle_LDAPBindRequest(self, request: Any, controls: Any, reply: Any) -> Any:
        return defer.ensureDeferred(self._bind(request))

    async def _bind(self, request: Any) -> Any:
        if request.version != 3:
            return pureldap.LDAPBindResponse(
                resultCode=ldaperrors.LDAPProtocolError.resultCode,
                errorMessage=b"only LDAPv3 is supported",
            )
        if request.sasl:
            return INVALID
        dn = request.dn.decode("utf-8", "replace") if request.dn else ""
        auth = request.auth if isinstance(request.auth, bytes) else b""
        if not dn and not auth:
            # An anonymous bind is the directory's business: pass it through.
            try:
                return await self._upstream_bind(b"", b"")
            except DirectoryUnavailable:
                return UNAVAILABLE_RESPONSE
        if not dn or not auth:
            return INVALID  # a name with an empty password is never forwarded
        try:
            secret = auth.decode("utf-8")
        except UnicodeDecodeError:
            return INVALID
        peer = self.transport.getPeer()
        result = await self.authenticator.authenticate(
            AuthRequest(dn, secret, getattr(peer, "host", None), "ldap"), self._check_password
        )
        if result.ok:
            return pureldap.LDAPBindResponse(resultCode=0)
        return UNAVAILABLE_RESPONSE if result.unavailable else INVALID

    async def _upstream(self) -> Any:
        while self.client is None or not self.client.connected:
            if not self.connected or self.client is not None:
                raise DirectoryUnavailable("upstream connection closed")
            d: defer.Deferred[None] = defer.Deferred()
            self.queuedRequests.append((_Wake(d), None, None))
            await d
        return self.client

    async def _upstream_bind(self, dn: bytes, password: bytes) -> Any:
        client = await self._upstream()
        return await client.send(pureldap.LDAPBindRequest(dn=dn, auth=password))

    async def _check_password(self, dn: str, password: bytes) -> tuple[int, str]:
        try:
            resp = await self._upstream_bind(dn.encode(), password)
        except (ConnectionError, neterror.ConnectionClosed) as exc:
            raise DirectoryUnavailable(f"upstream bind: {exc}") from exc
        message = resp.errorMessage
        return resp.resultCode, message.decode("utf-8", "replace") if message else ""

    def _forwardRequestToProxiedServer(self, request: Any, controls: Any, reply: Any) -> Any:
        if isinstance(request, _Wake):
            request.deferred.callback(None)
            return None
        return super()._forwardRequestToProxiedServer(request, controls, reply)

    def _failedToConnectToProxiedServer(self, err: Any) -> None:
        for request, _controls, _reply in self.queuedRequests:
            if isinstance(request, _Wake):
                request.deferred.errback(DirectoryUnavailable("upstream directory unreachable"))
        self.queuedRequests = [q for q in self.queuedRequests if not isinstance(q[0], _Wake)]
        super()._failedToConnectToProxiedServer(err)

    def _gotResponseFromProxiedServer(
        self, response: Any, reply: Any, request: Any, controls: Any, dseq: Any
    ) -> bool:
        super()._gotResponseFromProxiedServer(response, reply, request, controls, dseq)
        return not isinstance(response, _NOT_FINAL)


class _Wake:
    """A placeholder in ProxyBase's backlog: fires when the upstream connection is ready."""

    def __init__(self, deferred: defer.Deferred[None]) -> None:
        self.deferred = deferred
