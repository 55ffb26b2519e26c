"""One gateway process of the race test: its own reactor, its own connections.

For each race the two processes meet at a barrier, then both submit the same
HOTP code; the parent checks that exactly one of them was accepted.  With ``between``, the
first gateway starts alone and opens its OTP-state connection, the parent changes
something (e.g. moves the PDC emulator role), then the others start and the races run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_gateway(config_doc: dict[str, Any], name: str, key: bytes, races: int,
                barrier: Any, results: Any, worker: int, password: str | None = None,
                ready: Any = None) -> None:
    """``password``: log in with password+code (the password bound on the gateway's own
    read servers) instead of the code alone.  ``ready``: first look the user up (which
    opens the OTP-state connection), put where it went there, then wait for the others.
    Each worker reports its outcomes and where its OTP state goes at the end, with the
    gateway's log lines."""
    from twisted.internet import defer, reactor, threads
    from twisted.logger import formatEvent, globalLogPublisher

    from otpgate.auth.requests import Appended, Channel, CodeOnly
    from otpgate.config import parse_config
    from otpgate.otp.oath import hotp
    from otpgate.service import Gateway
    from otpgate.vault import Keyring

    config = parse_config(config_doc, Path("/"))
    gw = Gateway(config, Keyring.load(config.keyring), reactor)
    outcomes: list[tuple[int, bool, str]] = []
    details: dict[str, Any] = {"log": []}

    def keep(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("otpgate") and len(details["log"]) < 50:
            details["log"].append(formatEvent(event))

    globalLogPublisher.addObserver(keep)

    async def main() -> None:
        try:
            if ready is not None:
                try:
                    await gw.store.resolve(name, fresh=True)
                    where = await write_server(gw)
                except Exception as exc:
                    where = {"error": f"{type(exc).__name__}: {exc}"}
                ready.put(where)
            for counter in range(races):
                await threads.deferToThread(barrier.wait, 180 if counter == 0 else 60)
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
            details.update(await write_server(gw))
        except Exception as exc:
            details["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            gw.close()
            results.put((worker, outcomes, details))
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
    reactor.run()


async def write_server(gw: Any) -> dict[str, Any]:
    """Where the gateway's OTP state goes now: the pool's URLs and the connection's peer."""
    conn = await gw.write_pool.connection()
    transport = conn.client.transport
    return {"write_urls": [u.url for u in gw.write_pool.urls],
            "write_peer": transport.getPeer().host if transport is not None else None}


def race(docs: list[dict[str, Any]], name: str, key: bytes, races: int,
         password: str | None = None, timeout: float = 300.0,
         between: Any = None, details: dict[int, Any] | None = None) -> dict[int, list]:
    """One gateway process per config document (workers 1, 2, ...); ``races`` times they all
    submit the same code at once.  Each worker's outcomes by its number; a worker that does
    not report within ``timeout`` or does not exit cleanly fails the run.

    ``between``: worker 1 starts alone and looks the user up; ``between(where)`` is called
    with where its OTP state went, then the others start.  ``details``, if given, receives
    each worker's report (``write_urls``, ``write_peer``, ``log``; ``ready`` for worker 1
    with ``between``)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(docs))
    results = ctx.Queue()
    ready = ctx.Queue() if between is not None else None
    procs = [ctx.Process(target=run_gateway,
                         args=(doc, name, key, races, barrier, results, w, password,
                               ready if w == 1 else None))
             for w, doc in enumerate(docs, 1)]
    first: dict[str, Any] | None = None
    try:
        procs[0].start()
        if ready is not None:
            first = ready.get(timeout=timeout)
            try:
                if "error" in first:
                    raise AssertionError(f"worker 1 before the others: {first['error']}")
                between(first)
            except BaseException:
                barrier.abort()  # worker 1 stops waiting for the others
                raise
        for p in procs[1:]:
            p.start()
        reports = [results.get(timeout=timeout) for _ in procs]
        collected = {w: outcomes for w, outcomes, _ in reports}
        if details is not None:
            details.update({w: report for w, _, report in reports})
            if first is not None:
                details[1]["ready"] = first
    finally:
        for p in procs:
            if p.pid is None:
                continue  # never started
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
