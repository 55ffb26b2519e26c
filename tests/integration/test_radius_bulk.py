"""The done-criterion run: thousands of append-mode logins from radclient -p 64.

The first run of the file (one valid password+HOTP code per user, so that no user has two
requests in flight: with two, a later code that arrives first rightly retires the earlier
one) gets only Access-Accepts; the second run of the very same file only Access-Rejects,
because every code is spent.
"""

from __future__ import annotations

import time

import pytest_twisted

from otpgate.otp.oath import hotp
from tests.integration.backends import USER_PASSWORD
from tests.integration.test_radius import enroll, pap, start_radius, summary

ROUNDS = 1


@pytest_twisted.ensureDeferred
async def test_thousands_of_append_logins_then_all_replays_rejected(backend, tmp_path):
    users = 300 if backend.is_ad else 2000  # Samba: LDAPS user creation and binds are slow
    radius = await start_radius(backend, tmp_path)
    try:
        keys = []
        for _ in range(users):
            name, _dn = backend.new_user("bulk")
            keys.append((name, await enroll(radius, name)))
        requests = "\n".join(
            pap(name, USER_PASSWORD + hotp(key, counter))
            for counter in range(ROUNDS)
            for name, key in keys
        )
        total = users * ROUNDS
        started = time.monotonic()
        _code, out, err = await radius.radclient(requests, "-p", "64", "-s", "-q", "-t", "10",
                                                 "-r", "3")
        elapsed = time.monotonic() - started
        assert summary(out) == (total, 0, 0), out + err
        c = radius.server.counters
        assert c.accepted == total and c.rejected == 0 and c.errors == 0
        print(f"\n{total} append logins on {backend.name}: {total / elapsed:.0f}/s")

        _code, out, err = await radius.radclient(requests, "-p", "64", "-s", "-q", "-t", "10",
                                                 "-r", "3")
        assert summary(out) == (0, total, 0), out + err
        assert c.accepted == total and c.rejected == total and c.errors == 0
    finally:
        await radius.stop()
