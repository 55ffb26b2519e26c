"""Two Samba AD DCs, two gateways, OTP state pinned by ``write_url = "discover"``.

Run as ``python -m tests.integration.samba2_scenario WORKDIR`` (root): it re-runs itself in
a network namespace of its own (``unshare --net --pid --fork --mount-proc``), so 127.0.0.2
on ``lo`` and Samba's fixed ports 389/636/3268/3269 never touch the host's network or the
suite's own Samba DC; when the scenario ends the PID namespace ends with it, taking every
Samba process along. Inside:

1. dc1 (127.0.0.1, PDC emulator) is provisioned, dc2 joins on 127.0.0.2 (tests/servers/
   samba_pair.py), certificates from one CA, StartTLS;
2. gateway A reads from [dc2, dc1], gateway B from [dc1, dc2], both on the ad profile's
   default ``write_url = "discover"``: both must discover dc1;
3. RACES races of the same code (password+code) through A and B, separate processes:
   every code accepted exactly once;
4. dc1 stops: OTP logins through both gateways' LDAP proxies fail closed (52 unavailable),
   an exempt account's bind still works (on dc2); dc1 starts again: OTP logins resume, no
   gateway restart;
5. measured only: the same races with each gateway pinned to its own DC (A to dc2, B to
   dc1), the set-up ``"discover"`` replaces;
6. the PDC emulator role moves to dc2 while dc1 stays up, between the start of gateway A
   and of gateway B: both write to dc2, every code accepted once (samba2_role_move.py).

Prints one JSON object on stdout (``ok``; ``error`` for steps 1-5, ``role_move`` with its own
``error`` for step 6; measurements); exit status 0 only if every step passed. Every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RACES = int(os.environ.get("OTPGATE_SAMBA2_RACES", "30"))
OK_REASONS = ("wrong OTP", "OTP already used")


def outside(workdir: Path, timeout: float) -> int:
    """Re-run this script inside fresh network + PID namespaces."""
    from tests.servers.samba_pair import NSS_WRAPPER

    unshare = shutil.which("unshare")
    if unshare is None:
        print(json.dumps({"ok": False, "error": "unshare (util-linux) not found"}))
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # The gateways resolve the discovered dc1.otpgate.test like Samba does.
        "LD_PRELOAD": NSS_WRAPPER,
        "NSS_WRAPPER_HOSTS": str(workdir / "hosts"),
        "PYTHONPATH": str(ROOT),
    }
    cmd = [unshare, "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
           sys.executable, "-m", "tests.integration.samba2_scenario", "--inside", str(workdir)]
    try:
        result = subprocess.run(cmd, env=env, cwd=ROOT, timeout=timeout, check=False,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        # unshare --kill-child: its child (our PID 1 there) dies, and the namespace with it.
        print(json.dumps({"ok": False, "error": f"scenario timed out after {timeout}s"}))
        return 1
    return result.returncode


def inside(workdir: Path) -> int:
    report: dict[str, Any] = {"ok": False, "error": None, "races": RACES}
    pair = None
    started = time.monotonic()
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", "127.0.0.2/8", "dev", "lo"]):
            subprocess.run(cmd, check=True, timeout=10, capture_output=True)
        from tests.servers.samba_pair import SambaPair

        pair = SambaPair(workdir)
        pair.start()
        report["setup"] = {k: round(v, 2) for k, v in pair.timings.items()}
        from twisted.internet import task

        task.react(lambda reactor: _run(reactor, pair, workdir, report))
    except SystemExit as done:
        if done.code not in (0, None) and report["error"] is None:
            report["error"] = f"exit {done.code}"
    except BaseException as exc:
        report["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}"
    finally:
        if pair is not None:
            pair.stop()
        report["total_s"] = round(time.monotonic() - started, 1)
    report["ok"] = failed(report) is None
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


def _run(reactor: Any, pair: Any, workdir: Path, report: dict[str, Any]) -> Any:
    from twisted.internet import defer

    async def main() -> None:
        try:
            await scenario(reactor, pair, workdir, report)
        except BaseException as exc:
            report["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}"

    return defer.ensureDeferred(main())


def failed(report: dict[str, Any]) -> str | None:
    """What went wrong in steps 1-5 or in step 6, or None."""
    if report["error"] is not None:
        return report["error"]
    move = report.get("role_move")
    if move is None:
        return "the role move (step 6) did not run"
    return move.get("error")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


async def scenario(reactor: Any, pair: Any, workdir: Path, report: dict[str, Any]) -> None:
    from twisted.internet import threads

    from otpgate.otp.oath import hotp
    from otpgate.service import Gateway
    from otpgate.vault import Keyring, keygen
    from tests.integration.backends import USER_PASSWORD, Backend
    from tests.integration.proxyhelp import start_proxy
    from tests.integration.race_worker import enroll_hotp

    dc1, dc2 = pair.dc1, pair.dc2
    keyring = workdir / "keyring.json"
    keygen(keyring, "k1")
    backend = Backend("samba-pair", "ad", dc1, keyring)
    common = {"start_tls": True, "ca_file": str(pair.ca_file), "timeout": 2}
    sections = {
        "A": {"urls": [dc2.ldap_url, dc1.ldap_url], **common},
        "B": {"urls": [dc1.ldap_url, dc2.ldap_url], **common},
    }
    name, dn = backend.new_user("racer")
    exempt, exempt_dn = backend.new_user("exempt")
    _ = exempt
    backend.state_dn()

    # 1. discovery: both gateways find dc1 (the PDC emulator), whichever DC they read from
    report["discovery"] = {}
    for label, section in sections.items():
        config = backend.config(section)
        check(config.directory.write_url in (None, "discover"), f"write_url {config.directory.write_url}")
        gw = Gateway(config, Keyring.load(keyring), reactor)
        try:
            conn = await gw.write_pool.connection()
            urls = [u.url for u in gw.write_pool.urls]
            transport = conn.client.transport
            peer = transport.getPeer().host if transport is not None else None
        finally:
            gw.close()
        host = urls[0].split("//", 1)[1].rsplit(":", 1)[0]
        resolved = socket.gethostbyname(host)
        report["discovery"][label] = {"reads": section["urls"], "write_urls": urls,
                                      "resolved": resolved, "peer": peer}
        check(len(urls) == 1 and resolved == dc1.host and peer == dc1.host,
              f"gateway {label} discovered {urls} ({resolved}, peer {peer}), not dc1")

    # 2. enrol through a gateway (state written to dc1), replicate to dc2
    key = os.urandom(20)
    await enroll_hotp(backend.config(sections["A"]), name, key)
    await threads.deferToThread(pair.replicate)

    # 3. races
    t = time.monotonic()
    collected = await threads.deferToThread(race, backend, name, key, list(sections.values()))
    accepted = {c: 0 for c in range(RACES)}
    odd: list[str] = []
    for outcomes in collected.values():
        check(len(outcomes) == RACES, f"{len(outcomes)} outcomes, not {RACES}")
        for counter, ok, reason in outcomes:
            accepted[counter] += ok
            if not ok and reason not in OK_REASONS and not reason.startswith("ConcurrentUpdate"):
                odd.append(reason)
    report["race"] = {
        "accepted_twice": sum(n > 1 for n in accepted.values()),
        "accepted_once": sum(n == 1 for n in accepted.values()),
        "never": sum(n == 0 for n in accepted.values()),
        "other_reasons": sorted(set(odd))[:5],
        "seconds": round(time.monotonic() - t, 1),
    }
    check(all(n == 1 for n in accepted.values()), f"race: {report['race']}")
    check(not odd, f"unexpected failure reasons: {odd[:5]}")

    # 4. outage of the PDC emulator; exempt binds go on, OTP fails closed, then resumes
    await threads.deferToThread(pair.replicate)
    policy = {"exempt_dns": [exempt_dn]}
    proxies = {}
    for label, section in sections.items():
        proxies[label] = await start_proxy(backend, workdir / f"proxy-{label}", section,
                                           policy=policy)
    outage: dict[str, Any] = {}
    report["outage"] = outage
    counter = RACES
    try:
        for label, proxy in proxies.items():
            got = await proxy.ldap3_bind(dn, USER_PASSWORD + hotp(key, counter))
            check(got == (True, 0), f"{label} before outage: {got}")
            counter += 1
        t = time.monotonic()
        await threads.deferToThread(dc1.stop)
        outage["dc1_stop_s"] = round(time.monotonic() - t, 2)
        for label, proxy in proxies.items():
            t = time.monotonic()
            got = await proxy.ldap3_bind(dn, USER_PASSWORD + hotp(key, counter))
            outage[f"{label}_otp_fail_closed_s"] = round(time.monotonic() - t, 3)
            check(got == (False, 52), f"{label} OTP login with dc1 down: {got}, not (False, 52)")
            t = time.monotonic()
            got = await proxy.ldap3_bind(exempt_dn, USER_PASSWORD)
            outage[f"{label}_exempt_bind_s"] = round(time.monotonic() - t, 3)
            check(got == (True, 0), f"{label} exempt bind with dc1 down: {got}")
        t = time.monotonic()
        await threads.deferToThread(dc1.start)
        outage["dc1_restart_s"] = round(time.monotonic() - t, 2)
        for label, proxy in proxies.items():  # the code refused above: it was not spent
            t = time.monotonic()
            got = await proxy.ldap3_bind(dn, USER_PASSWORD + hotp(key, counter))
            outage[f"{label}_otp_resumed_s"] = round(time.monotonic() - t, 3)
            check(got == (True, 0), f"{label} OTP login after dc1 is back: {got}")
            counter += 1
    finally:
        if not dc1.running:
            await threads.deferToThread(dc1.start)
        for proxy in proxies.values():
            await proxy.stop()

    # 5. for comparison, measured and not asserted: each gateway pinned to its own DC (the
    #    "nearest server" set-up that write_url = "discover" replaces)
    name, _dn = backend.new_user("unpinned")
    await enroll_hotp(backend.config(sections["A"]), name, key)
    await threads.deferToThread(pair.replicate)
    own = [{**sections["A"], "write_url": dc2.ldap_url}, {**sections["B"], "write_url": dc1.ldap_url}]
    collected = await threads.deferToThread(race, backend, name, key, own)
    accepted = {c: 0 for c in range(RACES)}
    for outcomes in collected.values():
        for counter, ok, _reason in outcomes:
            accepted[counter] += ok
    report["unpinned_each_own_dc"] = {
        "accepted_twice": sum(n > 1 for n in accepted.values()),
        "never": sum(n == 0 for n in accepted.values()),
    }

    # 6. the PDC emulator role moves to dc2 while dc1 stays up (last: dc2 keeps the role)
    from tests.integration.samba2_role_move import role_move

    part: dict[str, Any] = {"error": None}
    report["role_move"] = part
    try:
        await role_move(pair, backend, sections, os.urandom(20), RACES, part)
    except BaseException as exc:
        part["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}"


def race(backend: Any, name: str, key: bytes, sections: list[dict[str, Any]]) -> dict[int, list]:
    """Two gateway processes (one per section) log in with the same code RACES times."""
    from tests.integration.backends import USER_PASSWORD
    from tests.integration.race_worker import race as run_race

    docs = [{"directory": backend.directory_section(**s),
             "vault": {"keyring": str(backend.keyring)}} for s in sections]
    return run_race(docs, name, key, RACES, USER_PASSWORD, timeout=180)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--inside":
        return inside(Path(argv[2]))
    if len(argv) != 2:
        print(f"usage: {argv[0]} WORKDIR", file=sys.stderr)
        return 2
    return outside(Path(argv[1]).resolve(), float(os.environ.get("OTPGATE_SAMBA2_TIMEOUT", "420")))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
