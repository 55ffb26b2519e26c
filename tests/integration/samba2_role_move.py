"""The PDC emulator role moves while the old holder stays up (a part of samba2_scenario.py).

Gateway A starts while dc1 holds the role and opens its OTP-state connection to dc1. The
role is transferred to dc2 (``samba-tool fsmo transfer --role=pdc`` against dc2); both DCs
stay up and both accept writes. Gateway B starts after the move and finds dc2. Once A's
``pdc_check_seconds`` have passed, the same code is raced through A and B: it must be
accepted once, because both now write to dc2 (a code spent there is refused by both at
once; replication to dc1 would take far longer). A must show that its OTP state went to
dc2: its write connection's peer and its log line.
"""

from __future__ import annotations

import time
from typing import Any

CHECK_SECONDS = 3.0
"""Gateway A's ``pdc_check_seconds`` (default 60): the test waits this long after the move."""
OK_REASONS = ("wrong OTP", "OTP already used")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def tally(collected: dict[int, list], races: int) -> dict[str, Any]:
    """How often each raced code was accepted, over every gateway's outcomes."""
    accepted = {c: 0 for c in range(races)}
    odd: list[str] = []
    for outcomes in collected.values():
        check(len(outcomes) == races, f"{len(outcomes)} outcomes, not {races}")
        for counter, ok, reason in outcomes:
            accepted[counter] += ok
            if not ok and reason not in OK_REASONS and not reason.startswith("ConcurrentUpdate"):
                odd.append(reason)
    return {
        "accepted_twice": sum(n > 1 for n in accepted.values()),
        "accepted_once": sum(n == 1 for n in accepted.values()),
        "never": sum(n == 0 for n in accepted.values()),
        "other_reasons": sorted(set(odd))[:5],
    }


async def role_move(pair: Any, backend: Any, sections: dict[str, dict[str, Any]], key: bytes,
                    races: int, part: dict[str, Any]) -> None:
    """Fills ``part`` with what it saw; raises AssertionError at the first thing wrong."""
    from twisted.internet import threads

    from tests.integration.backends import USER_PASSWORD
    from tests.integration.race_worker import enroll_hotp, race

    dc1, dc2 = pair.dc1, pair.dc2
    name, _dn = backend.new_user("mover")
    await enroll_hotp(backend.config(sections["A"]), name, key)  # written to dc1, the PDC
    await threads.deferToThread(pair.replicate)
    ntds = {dc.host: await threads.deferToThread(pair.service_name, dc) for dc in (dc1, dc2)}
    owner = await threads.deferToThread(pair.role_owner, dc1)
    check(owner.lower() == ntds[dc1.host].lower(), f"dc1 is not the PDC emulator: {owner}")

    def move(where: dict[str, Any]) -> None:
        """Gateway A is up and writes to dc1: the role moves to dc2, then A's period passes."""
        part["A_before"] = where
        check(where["write_peer"] == dc1.host, f"gateway A did not start on dc1: {where}")
        started = time.monotonic()
        pair.transfer_pdc()
        part["transfer_s"] = round(time.monotonic() - started, 2)
        time.sleep(CHECK_SECONDS + 0.5)

    docs = [
        {"directory": backend.directory_section(**sections["A"], pdc_check_seconds=CHECK_SECONDS),
         "vault": {"keyring": str(backend.keyring)}},
        {"directory": backend.directory_section(**sections["B"]),
         "vault": {"keyring": str(backend.keyring)}},
    ]
    details: dict[int, Any] = {}
    started = time.monotonic()
    collected = await threads.deferToThread(
        race, docs, name, key, races, USER_PASSWORD, 180, move, details
    )
    part["race"] = {**tally(collected, races), "seconds": round(time.monotonic() - started, 1)}
    owners = {dc.host: await threads.deferToThread(pair.role_owner, dc) for dc in (dc1, dc2)}
    part["owners_after"] = owners
    for label, worker in (("A", 1), ("B", 2)):
        report = details[worker]
        part[label] = {"write_urls": report.get("write_urls"),
                       "write_peer": report.get("write_peer"),
                       "log": [line for line in report["log"] if "PDC" in line][:5]}
    check(all(o.lower() == ntds[dc2.host].lower() for o in owners.values()),
          f"role owners after the move: {owners}")
    check(part["race"]["accepted_twice"] == 0 and part["race"]["accepted_once"] == races,
          f"race after the move: {part['race']}")
    check(not part["race"]["other_reasons"], f"unexpected reasons: {part['race']}")
    for label in "AB":
        check(part[label]["write_peer"] == dc2.host, f"gateway {label} writes to {part[label]}")
    check(any("role moved" in line for line in part["A"]["log"]),
          f"gateway A logged no move: {part['A']['log']}")
