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

    from otpgate.auth.requests import Appended, Channel, CodeOnly
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
                    request = CodeOnly(
                        name=name, client="127.0.0.1", channel=Channel(f"w{worker}"), code=code
                    )
                    result = await gw.authenticator.login(request)
                else:
                    request = Appended(
                        name=name,
                        client="127.0.0.1",
                        channel=Channel(f"w{worker}"),
                        typed=password + code,
                    )
                    result = await gw.authenticator.login(request, gw.check_password)
                outcomes.append((counter, result.ok, result.reason))
        finally:
            gw.close()
            results.put((worker, outcomes))
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
    reactor.run()


def race(docs: list[dict[str, Any]], name: str, key: bytes, races: int,
         password: str | None = None, timeout: float = 300.0) -> dict[int, list]:
    """One gateway process per config document (workers 1, 2, ...); ``races`` times they all
    submit the same code at once.  Each worker's outcomes by its number; a worker that does
    not report within ``timeout`` or does not exit cleanly fails the run."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(docs))
    results = ctx.Queue()
    procs = [ctx.Process(target=run_gateway,
                         args=(doc, name, key, races, barrier, results, w, password))
             for w, doc in enumerate(docs, 1)]
    for p in procs:
        p.start()
    try:
        collected = dict(results.get(timeout=timeout) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return collected


async def enroll_hotp(config: Any, name: str, key: bytes) -> None:
    """Give ``name`` an HOTP token with ``key`` through a gateway of its own (``config``)."""
    from twisted.internet import reactor

    from otpgate.admin.enrollment import enroll_change, new_oath_token
    from otpgate.service import Gateway
    from otpgate.tokens import TokenType
    from otpgate.vault import Keyring

    gw = Gateway(config, Keyring.load(config.keyring), reactor)
    try:
        user = await gw.store.resolve(name)
        token, secret = new_oath_token(config.otp, TokenType.HOTP, key=key)
        await gw.store.update(user, lambda s: enroll_change(s, token, secret, 5))
    finally:
        gw.close()
