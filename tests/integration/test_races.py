"""Two gateway processes race on the same codes: each code is accepted exactly once."""

from __future__ import annotations

import os

import pytest_twisted

from tests.integration.race_worker import enroll_hotp, race

RACES = 200


@pytest_twisted.ensureDeferred
async def test_two_gateways_racing_never_accept_a_code_twice(backend):
    config_doc = {"directory": backend.directory_section(),
                  "vault": {"keyring": str(backend.keyring)}}
    name, _dn = backend.new_user("race")
    key = os.urandom(20)
    await enroll_hotp(backend.config(), name, key)
    collected = race([config_doc, config_doc], name, key, RACES)
    accepted = {c: 0 for c in range(RACES)}
    for outcomes in collected.values():
        assert len(outcomes) == RACES
        for counter, ok, reason in outcomes:
            accepted[counter] += ok
            assert ok or reason in ("wrong OTP", "OTP already used", "ConcurrentUpdate") or reason.startswith(
                "ConcurrentUpdate"), (reason, collected)  # all outcomes, to see how it came about
    assert all(n == 1 for n in accepted.values()), {c: n for c, n in accepted.items() if n != 1}
    wins = {w: sum(ok for _, ok, _ in o) for w, o in collected.items()}
    print(f"{backend.name}: {RACES} races, wins per gateway {wins}")
