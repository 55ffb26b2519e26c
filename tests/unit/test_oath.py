"""HOTP/TOTP: RFC 4226 Appendix D, RFC 6238 Appendix B, and the verification rules."""

import pytest

from otpgate.otp.oath import (
    Algorithm,
    check_look_ahead,
    hotp,
    resync_hotp,
    totp,
    verify_hotp,
    verify_totp,
)

RFC4226_KEY = b"12345678901234567890"
RFC4226_CODES = ["755224", "287082", "359152", "969429", "338314",
                 "254676", "287922", "162583", "399871", "520489"]


@pytest.mark.parametrize("counter,code", list(enumerate(RFC4226_CODES)))
def test_rfc4226_appendix_d(counter, code):
    assert hotp(RFC4226_KEY, counter) == code


# RFC 6238 Appendix B: the SHA-256 and SHA-512 keys are the ASCII seed repeated to 32/64 bytes.
KEYS = {
    Algorithm.SHA1: b"12345678901234567890",
    Algorithm.SHA256: b"12345678901234567890123456789012",
    Algorithm.SHA512: b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC6238 = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize("t,sha1,sha256,sha512", RFC6238)
def test_rfc6238_appendix_b(t, sha1, sha256, sha512):
    for alg, expected in ((Algorithm.SHA1, sha1), (Algorithm.SHA256, sha256), (Algorithm.SHA512, sha512)):
        assert totp(KEYS[alg], t, digits=8, algorithm=alg) == expected


def test_hotp_accepts_within_look_ahead_and_retires_skipped():
    match = verify_hotp(RFC4226_KEY, RFC4226_CODES[3], last_counter=-1, look_ahead=10)
    assert match is not None and match.counter == 3 and match.skipped == 3
    # the skipped codes 0..2 are now retired, and 3 itself cannot be replayed
    for counter in range(4):
        assert verify_hotp(RFC4226_KEY, RFC4226_CODES[counter], last_counter=3) is None
    assert verify_hotp(RFC4226_KEY, RFC4226_CODES[4], last_counter=3).counter == 4


def test_hotp_beyond_look_ahead_is_rejected():
    assert verify_hotp(RFC4226_KEY, RFC4226_CODES[9], last_counter=-1, look_ahead=5) is None
    assert verify_hotp(RFC4226_KEY, RFC4226_CODES[6], last_counter=-1, look_ahead=6).counter == 6


def test_hotp_malformed_codes_rejected():
    for bad in ("", "75522", "7552244", "75522a", "７５５２２４", " 55224"):
        assert verify_hotp(RFC4226_KEY, bad, last_counter=-1) is None


def test_hotp_sha512_eight_digits():
    key = KEYS[Algorithm.SHA512]
    code = hotp(key, 7, digits=8, algorithm=Algorithm.SHA512)
    assert len(code) == 8
    assert verify_hotp(key, code, 5, digits=8, algorithm=Algorithm.SHA512).counter == 7
    assert verify_hotp(key, code[:6], 5, digits=8, algorithm=Algorithm.SHA512) is None


def test_look_ahead_above_100_refused_with_explanation():
    with pytest.raises(ValueError, match="resync"):
        check_look_ahead(101)
    check_look_ahead(100)


def test_totp_window_replay_and_order():
    key = KEYS[Algorithm.SHA1]
    now = 1_700_000_000
    step = now // 30
    current = totp(key, now)
    previous = totp(key, now - 30)
    nxt = totp(key, now + 30)
    m = verify_totp(key, current, now, last_step=-1)
    assert m is not None and m.step == step and m.drift == 0
    assert verify_totp(key, current, now, last_step=m.step) is None  # replay
    assert verify_totp(key, previous, now, last_step=m.step) is None  # older after newer
    m2 = verify_totp(key, nxt, now, last_step=m.step)
    assert m2 is not None and m2.step == step + 1 and m2.drift == 1
    assert verify_totp(key, totp(key, now - 60), now, last_step=-1) is None  # outside ±1


def test_totp_drift_recentres_window():
    key = KEYS[Algorithm.SHA1]
    now = 1_700_000_000
    ahead = totp(key, now + 5 * 30)
    assert verify_totp(key, ahead, now, -1, window=1) is None
    m = verify_totp(key, ahead, now, -1, window=1, drift=5)
    assert m is not None and m.drift == 5


def test_totp_period_and_window_bounds():
    with pytest.raises(ValueError):
        verify_totp(b"k", "123456", 0, -1, period=361)
    with pytest.raises(ValueError):
        verify_totp(b"k", "123456", 0, -1, window=65)


def test_resync_finds_three_consecutive_codes():
    codes = tuple(hotp(RFC4226_KEY, c) for c in (54_321, 54_322, 54_323))
    assert resync_hotp(RFC4226_KEY, codes, last_counter=-1) == 54_323
    assert resync_hotp(RFC4226_KEY, (codes[0], codes[2], codes[1]), last_counter=-1) is None
    assert resync_hotp(RFC4226_KEY, codes, last_counter=60_000) is None


def test_resync_never_searches_past_the_largest_storable_counter():
    from otpgate.otp.oath import MAX_COUNTER, resync_hotp

    key = b"12345678901234567890"
    def three(first):
        return tuple(hotp(key, c) for c in (first, first + 1, first + 2))

    assert resync_hotp(key, three(MAX_COUNTER - 2), MAX_COUNTER - 3) == MAX_COUNTER
    assert resync_hotp(key, three(MAX_COUNTER - 1), MAX_COUNTER - 2) is None  # 3rd past the end
    assert resync_hotp(key, three(0), MAX_COUNTER) is None  # no traceback at the very end
