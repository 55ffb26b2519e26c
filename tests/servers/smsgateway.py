"""A real HTTPS SMS gateway on loopback for tests whose gateway or portal runs as a
subprocess: ``http.server`` in a thread, TLS with the tests' CA, answering every request
with one status and body, and keeping what it received (the tests read the code there).

Usage::

    with SmsGateway(tls, status=500) as down, SmsGateway(tls) as up:
        delivery = {"sms_http": [down.table(), up.table()], "sms_country_prefixes": ["+49"]}
        ... up.wait_for(1)[0]["json"]["text"] ...

Starting fails loudly (never skips) if the server cannot listen.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .tlsca import TLSPaths


class SmsGateway:
    """Answers ``status`` with ``answer``; ``requests``: what it received, in order."""

    def __init__(
        self, tls: TLSPaths, status: int = 202, answer: bytes = b'{"status":"queued"}'
    ) -> None:
        self.tls = tls
        self.status = status
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                with gateway.lock:
                    gateway.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body,
                         "json": parsed}
                    )
                self.send_response(gateway.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(gateway.answer)))
                self.end_headers()
                self.wfile.write(gateway.answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request line holds nothing secret, but the tests' output stays clean

        return Handler

    def start(self) -> SmsGateway:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self.server = server
        self.port = server.server_address[1]
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> SmsGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/send"

    def table(self, **more: Any) -> dict[str, Any]:
        """Its ``[[delivery.sms_http]]`` table: JSON body, the tests' CA."""
        return {
            "url": self.url,
            "ca_file": str(self.tls.ca_file),
            "body": {"to": "{to}", "text": "Your code: {code}", "ref": "{user}"},
            "ok_status": [200, 202],
            "timeout": 5,
            **more,
        }

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} SMS request(s), got {len(self.requests)}")

    def codes(self) -> list[str]:
        """The codes of the messages received (the JSON body's text)."""
        with self.lock:
            texts = [str((r["json"] or {}).get("text", "")) for r in self.requests]
        return [m.group(1) for t in texts if (m := re.search(r"(\d{6,8})", t))]
