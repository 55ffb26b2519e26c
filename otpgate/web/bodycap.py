"""A request body cap enforced while the body arrives (a ``twisted.web`` Request subclass).

Twisted's ``Request`` writes every body to memory or, above 100,000 bytes or when chunked, to
a temporary file, and only calls the resource once all of it has arrived: a portal that
capped bodies after the fact still let anyone fill its disk and hold a connection for as
long as a 100 MB upload takes.  ``CappedRequest`` refuses a ``Content-Length`` above the cap
as soon as the headers are in (before any ``100 Continue``), stops at the first chunk that
takes a chunked or otherwise unbounded body over the cap, answers ``413`` and closes the
connection without reading further.  Bodies are kept in memory only (they are small).
The one larger body is the help desk's import upload (``MAX_UPLOAD``), allowed only on its
path and only with the cookie of a live help-desk session (``Portal.body_limit``).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.logger import Logger
from twisted.web import server

log = Logger()

MAX_BODY = 16 * 1024
"""The portal's forms are a few hundred bytes."""
MAX_UPLOAD = 4 * 1024 * 1024
"""An import file uploaded by the help desk: about 2,500 encrypted PSKC KeyPackages or
40,000 OATH CSV lines, parsed in memory and kept in the session until imported; a larger
batch is split, or imported with ``otpgate import`` (64 MiB)."""
TOO_LARGE = (
    b"HTTP/1.1 413 Content Too Large\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 19\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"request too large\r\n"
)


class CappedRequest(server.Request):
    """``server.Request`` with a body of at most ``max_body`` bytes."""

    max_body = MAX_BODY

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        server.Request.__init__(self, *args, **kwargs)
        self.body_received = 0
        self.refused = False
        self._body = BytesIO()

    def gotLength(self, length: int | None) -> None:
        self.content = self._body  # never a temporary file
        self.max_body = self._limit()
        if length is not None and length > self.max_body:
            self._refuse(f"Content-Length {length}")

    def _limit(self) -> int:
        """The cap of this request: the class's, unless the resource allows this path more
        (``body_limit(path, headers)``: the portal's upload form, for a help-desk session),
        decided on the request line and headers, before any of the body is read."""
        channel = self.channel
        resource = getattr(getattr(channel, "site", None), "resource", None)
        decide = getattr(resource, "body_limit", None)
        if decide is None:
            return self.max_body
        allowed = decide(getattr(channel, "_path", b""), self.requestHeaders)
        return self.max_body if allowed is None else int(allowed)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.body_received += len(data)
        if self.body_received > self.max_body:
            self._refuse(f"more than {self.body_received - len(data)} bytes received")
            return
        self._body.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.refused:
            return  # the connection is closing: the resource never sees this request
        server.Request.requestReceived(self, command, path, version)

    def _refuse(self, what: str) -> None:
        self.refused = True
        # No "100 Continue" after this (HTTPChannel sends it right after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        if channel is None or channel.transport is None:
            return
        peer = channel.transport.getPeer()
        log.info(
            "web: request body over {limit} bytes refused ({what}) from {peer}",
            limit=self.max_body,
            what=what,
            peer=getattr(peer, "host", peer),
        )
        # Stop parsing anything more on this connection, answer and close.
        channel.lineReceived = _ignore  # type: ignore[method-assign]
        channel.rawDataReceived = _ignore  # type: ignore[method-assign]
        channel.transport.write(TOO_LARGE)
        channel.loseConnection()


def _ignore(data: bytes) -> None:
    return None
