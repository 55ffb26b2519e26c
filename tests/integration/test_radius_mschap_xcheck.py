"""MS-CHAPv2 and CHAP against FreeRADIUS's own implementation (rlm_mschap, rlm_chap).

The same request goes to a throwaway FreeRADIUS whose users file holds the OTP as the
cleartext password and to otpgate (the OTP of an enrolled HOTP token); radclient decrypts
both replies.  MS-CHAP2-Success (the authenticator response) and the MPPE keys must be
identical: that is what a VPN concentrator checks and uses.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet import threads

from bench.radius_freeradius import FreeRadius
from otpgate.otp.oath import hotp
from tests.integration.test_radius import (
    SECRET,
    client_table,
    enroll,
    mschapv2_attributes,
    replies,
    start_radius,
)

REPLY_ATTRIBUTES = ("MS-CHAP2-Success", "MS-MPPE-Send-Key", "MS-MPPE-Recv-Key",
                    "MS-MPPE-Encryption-Policy", "MS-MPPE-Encryption-Types")


def reply_values(out: str) -> dict[str, str]:
    found = {}
    for name in REPLY_ATTRIBUTES:
        match = re.search(rf"^\s*{name} = (.+)$", out, re.M)
        if match:
            found[name] = match.group(1).strip()
    return found


@pytest.mark.parametrize("backend", ["slapd-stock"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_mschapv2_reply_matches_freeradius(backend, tmp_path):
    radius = await start_radius(backend, tmp_path,
                                [client_table(allow_mschapv2=True, allow_chap=True)])
    fr = None
    try:
        name, _dn = backend.new_user("xms")
        key = await enroll(radius, name)
        codes = [hotp(key, i) for i in range(2)]
        fr = FreeRadius(tmp_path / "freeradius", {name: codes[0]}, SECRET)
        await threads.deferToThread(fr.start)
        request, _challenge, _response = mschapv2_attributes(name, codes[0])
        _code, our_out, our_err = await radius.radclient(request, "-x")
        assert replies(our_out) == ["Access-Accept"], our_out + our_err
        _code, ref_out, ref_err = await radius.radclient(request, "-x", port=fr.port)
        assert replies(ref_out) == ["Access-Accept"], ref_out + ref_err
        ours, theirs = reply_values(our_out), reply_values(ref_out)
        assert set(ours) == set(REPLY_ATTRIBUTES), our_out
        assert ours == theirs, (ours, theirs)
        # a wrong proof: both reject
        wrong, _c, _r = mschapv2_attributes(name, codes[0][::-1] if codes[0][::-1] != codes[0] else "999999")
        _code, ref_out, _e = await radius.radclient(wrong, port=fr.port)
        _code, our_out, _e = await radius.radclient(wrong)
        assert replies(ref_out) == replies(our_out) == ["Access-Reject"], (ref_out, our_out)

        # CHAP: both accept the code, both reject another one
        fr.stop()
        fr = FreeRadius(tmp_path / "freeradius2", {name: codes[1]}, SECRET)
        await threads.deferToThread(fr.start)
        other = hotp(key, 50)  # far beyond the look-ahead: invalid for both
        for code, expect in ((other, "Access-Reject"), (codes[1], "Access-Accept")):
            chap = f'User-Name = "{name}"\nCHAP-Password = "{code}"\nMessage-Authenticator = 0x00\n'
            _c, ref_out, _e = await radius.radclient(chap, port=fr.port)
            _c, our_out, _e = await radius.radclient(chap)
            assert replies(ref_out) == replies(our_out) == [expect], (ref_out, our_out)
    finally:
        if fr is not None:
            fr.stop()
        await radius.stop()
