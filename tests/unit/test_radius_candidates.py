"""candidate_codes enumerates exactly what verify_code accepts (the CHAP/MS-CHAPv2 path)."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from otpgate.auth.verify import candidate_codes, verify_code
from otpgate.config import OtpConfig
from otpgate.otp.oath import Algorithm, hotp, time_step
from otpgate.tokens import Secret, Token, TokenType, TokenUse, UsedState


def token(tid, kind, digits=6, algorithm=Algorithm.SHA1, period=30):
    return Token(tid, kind, 0, digits=digits, algorithm=algorithm, period=period)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(-1, 1000),
    st.integers(-70, 70),
    st.integers(0, 3),
    st.integers(0, 12),
    st.sampled_from([6, 7, 8]),
    st.sampled_from(list(Algorithm)),
    st.floats(1e9, 2e9),
    st.integers(0, 2**32),
)
def test_candidates_match_verify_code(last, drift, window, look_ahead, digits, alg, now, seed):
    rng = random.Random(seed)
    tokens = (token("h", TokenType.HOTP, digits, alg), token("t", TokenType.TOTP, digits, alg, 30))
    secrets = {"h": Secret(rng.randbytes(20)), "t": Secret(rng.randbytes(20))}
    totp_last = time_step(now) + rng.randint(-5, 2) if last >= 0 else -1
    used = UsedState({"h": TokenUse(last), "t": TokenUse(totp_last, drift)})
    otp = OtpConfig(totp_window=window, hotp_look_ahead=look_ahead)
    candidates = candidate_codes(tokens, secrets, used, now, otp)
    seen = set()
    for cand in candidates:
        if cand.code in seen:
            continue  # verify_code returns the first occurrence only
        seen.add(cand.code)
        assert verify_code(tokens, secrets, used, cand.code, now, otp) == cand.match
    # and nothing outside the enumeration is accepted: every accepted code is a candidate
    for counter in range(max(last + 1, 0) + look_ahead + 1, max(last + 1, 0) + look_ahead + 4):
        code = hotp(secrets["h"].key, counter, digits, alg)
        if code not in seen:
            match = verify_code(tokens, secrets, used, code, now, otp)
            assert match is None or match.token.id == "t"


def test_scratch_and_yubico_are_not_enumerated():
    from otpgate.otp.scratch import generate_scratch_list

    _codes, scratch = generate_scratch_list(2, 8)
    tokens = (Token("s", TokenType.SCRATCH, 0, scratch=scratch),)
    assert candidate_codes(tokens, {}, UsedState(), 1e9, OtpConfig()) == []
