"""The done-criterion run: thousands of append-mode logins from radclient -p 64.

The first run of the file (one valid password+HOTP code per user, so that no user has two
requests in flight: with two, a later code that arrives first rightly retires the earlier
one) gets only Access-Accepts; the second run of the very same file only Access-Rejects,
because every code is spent (except where a spent code's six digits are also a code still
ahead in the look-ahead window: counted from the keys, see below).
"""

from __future__ import annotations

import time

import pytest_twisted

from otpgate.otp.oath import DEFAULT_HOTP_LOOK_AHEAD, hotp
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

        # A spent code is refused, unless the same six digits are also the code of a counter
        # still ahead (last + 1 ... last + 1 + look-ahead): that is a valid next code, as in
        # every RFC 4226 implementation (11 candidates: ~1.1e-5 per user, ~2% of runs of
        # 2,000 users had one).  Computed, not hoped for.
        ahead = range(1, 2 + DEFAULT_HOTP_LOOK_AHEAD)
        again = sum(
            1 for _name, key in keys if hotp(key, 0) in {hotp(key, c) for c in ahead}
        )
        _code, out, err = await radius.radclient(requests, "-p", "64", "-s", "-q", "-t", "10",
                                                 "-r", "3")
        assert summary(out) == (again, total - again, 0), out + err
        assert c.accepted == total + again and c.rejected == total - again and c.errors == 0
    finally:
        await radius.stop()
