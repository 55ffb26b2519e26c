"""One gateway process of the race test: its own reactor, its own connections.

For each race the two processes meet at a barrier, then both submit the same
HOTP code; the parent checks that exactly one of them was accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_gateway(config_doc: dict[str, Any], name: str, key: bytes, races: int,
                barrier: Any, results: Any, worker: int, password: str | None = None) -> None:
    """``password``: log in with password+code (the password bound on the gateway's own
    read servers) instead of the code alone."""
    from twisted.internet import defer, reactor, threads

    from otpgate.auth.pipeline import AuthRequest
    from otpgate.config import parse_config
    from otpgate.otp.oath import hotp
    from otpgate.service import Gateway
    from otpgate.vault import Keyring

    config = parse_config(config_doc, Path("/"))
    gw = Gateway(config, Keyring.load(config.keyring), reactor)
    outcomes: list[tuple[int, bool, str]] = []

    async def main() -> None:
        try:
            for counter in range(races):
                await threads.deferToThread(barrier.wait, 60)
                code = hotp(key, counter)
                if password is None:
                    request = AuthRequest(name, code, "127.0.0.1", f"w{worker}", True)
                    result = await gw.authenticator.authenticate(request, None)
                else:
                    request = AuthRequest(name, password + code, "127.0.0.1", f"w{worker}")
                    result = await gw.authenticator.authenticate(request, gw.check_password)
                outcomes.append((counter, result.ok, result.reason))
        finally:
            gw.close()
            results.put((worker, outcomes))
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
    reactor.run()
