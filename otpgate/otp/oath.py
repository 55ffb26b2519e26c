"""HOTP (RFC 4226) and TOTP (RFC 6238) generation and verification.

Pure functions: the caller supplies the key, the time and the last accepted
counter/step, and stores what comes back.  Verification is monotonic: a code
is accepted only for a counter (HOTP) or time step (TOTP) strictly greater
than the last one accepted, so no code is accepted twice or after a later one.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import compress

MIN_DIGITS = 6
MAX_DIGITS = 8
MIN_PERIOD = 1
MAX_PERIOD = 360
DEFAULT_PERIOD = 30
DEFAULT_TOTP_WINDOW = 1
MAX_TOTP_WINDOW = 64
DEFAULT_HOTP_LOOK_AHEAD = 10
MAX_HOTP_LOOK_AHEAD = 100
MAX_COUNTER = 2**64 - MAX_HOTP_LOOK_AHEAD - 2
"""The largest HOTP counter (or last accepted counter) otpgate stores: verification tries up
to ``last + 1 + MAX_HOTP_LOOK_AHEAD``, which must still fit the 64-bit counter of RFC 4226.
So every stored counter ``c`` satisfies ``0 <= c < 2**64 - 101``."""
RESYNC_WINDOW = 100_000
# A drift larger than this many steps is not learned (a wildly wrong clock is
# an enrollment problem, not drift).
MAX_DRIFT_STEPS = 64


class Algorithm(StrEnum):
    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def digest(self) -> str:
        return self.value

    @property
    def otpauth_name(self) -> str:
        """The spelling used in otpauth:// key URIs (Google Authenticator)."""
        return self.value.upper()


def check_digits(digits: int) -> int:
    if not MIN_DIGITS <= digits <= MAX_DIGITS:
        raise ValueError(f"digits must be {MIN_DIGITS} to {MAX_DIGITS}, not {digits}")
    return digits


def check_period(period: int) -> int:
    if not MIN_PERIOD <= period <= MAX_PERIOD:
        raise ValueError(f"TOTP period must be {MIN_PERIOD} to {MAX_PERIOD} seconds, not {period}")
    return period


def check_counter(counter: int, what: str = "counter") -> int:
    """A counter that can be stored: 0 to MAX_COUNTER (a look-ahead past it overflows 64 bits)."""
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(
            f"{what} {counter} is out of range: HOTP counters must be 0 to {MAX_COUNTER} "
            f"(2^64 - {2**64 - MAX_COUNTER}, so the look-ahead stays within 64 bits)"
        )
    return counter


def check_totp_window(window: int) -> int:
    if not 0 <= window <= MAX_TOTP_WINDOW:
        raise ValueError(f"TOTP window must be 0 to {MAX_TOTP_WINDOW} periods, not {window}")
    return window


def check_look_ahead(look_ahead: int) -> int:
    if look_ahead > MAX_HOTP_LOOK_AHEAD:
        raise ValueError(
            f"HOTP look-ahead {look_ahead} is above {MAX_HOTP_LOOK_AHEAD}: every extra counter is "
            "one more code an attacker may guess per try; resynchronise the token instead "
            "(otpgate resync USER CODE1 CODE2 CODE3)"
        )
    if look_ahead < 0:
        raise ValueError(f"HOTP look-ahead must be 0 to {MAX_HOTP_LOOK_AHEAD}, not {look_ahead}")
    return look_ahead


def hotp(key: bytes, counter: int, digits: int = 6, algorithm: Algorithm = Algorithm.SHA1) -> str:
    """The RFC 4226 code for ``counter``, zero-padded to ``digits``."""
    if counter < 0 or counter >= 1 << 64:
        raise ValueError("HOTP counter must fit in 64 bits")
    mac = hmac.digest(key, struct.pack(">Q", counter), algorithm.digest)  # one-shot C HMAC
    offset = mac[-1] & 0x0F
    binary = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(binary % 10**digits).zfill(digits)


def time_step(unix_time: float, period: int = DEFAULT_PERIOD, t0: int = 0) -> int:
    """RFC 6238 T: the number of whole periods since ``t0``."""
    return int((unix_time - t0) // period)


def totp(
    key: bytes,
    unix_time: float,
    digits: int = 6,
    algorithm: Algorithm = Algorithm.SHA1,
    period: int = DEFAULT_PERIOD,
) -> str:
    return hotp(key, time_step(unix_time, period), digits, algorithm)


_COUNTER = struct.Struct(">Q")


def _find(
    key: bytes, code: str, counters: Iterable[int], digits: int, algorithm: Algorithm
) -> int | None:
    """The first counter whose code equals ``code`` (well-formed: ``digits`` ASCII digits).

    Candidates are tried in order and the search stops at the first match.  Each comparison
    is of the truncated values as integers below 2^31 (one machine word each), which avoids
    formatting a string per candidate (4.3 -> 2.6 µs per candidate).  Stopping early tells a
    timer only that a code matched and at which offset: the login that follows says the
    first (a match is spent by a directory write, far louder than a few HMACs) and the offset
    is not secret.  A wrong code still costs the whole window.  Measured with
    bench/pipeline_cpu.py (look-ahead 10): 12 HMACs per HOTP login -> 1, ~100 µs less per
    login on the 2-core bench box.
    """
    wanted = int(code)
    modulus = 10**digits
    name = algorithm.value
    pack = _COUNTER.pack
    digest = hmac.digest
    for counter in counters:
        mac = digest(key, pack(counter), name)
        offset = mac[-1] & 0x0F
        if (int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF) % modulus == wanted:
            return counter
    return None


def _well_formed(code: str, digits: int) -> bool:
    return len(code) == digits and code.isascii() and code.isdigit()


@dataclass(frozen=True)
class HotpMatch:
    counter: int
    """The counter the code was generated from; store it as the last accepted."""

    skipped: int
    """How many codes before it were never used and are now retired."""


def verify_hotp(
    key: bytes,
    code: str,
    last_counter: int,
    *,
    digits: int = 6,
    algorithm: Algorithm = Algorithm.SHA1,
    look_ahead: int = DEFAULT_HOTP_LOOK_AHEAD,
) -> HotpMatch | None:
    """Accept ``code`` for a counter in (last_counter, last_counter + 1 + look_ahead].

    ``last_counter`` is the last accepted counter, -1 for a token never used.
    Codes skipped over are retired with the match (the new last counter is
    the matched one).
    """
    check_look_ahead(look_ahead)
    if not _well_formed(code, digits):
        return None
    first = last_counter + 1
    counter = _find(key, code, range(first, first + look_ahead + 1), digits, algorithm)
    if counter is None:
        return None
    return HotpMatch(counter=counter, skipped=counter - first)


@dataclass(frozen=True)
class TotpMatch:
    step: int
    """The time step matched; store it as the last accepted step."""

    drift: int
    """Steps between the token's clock and ours (matched step - current step)."""


def verify_totp(
    key: bytes,
    code: str,
    unix_time: float,
    last_step: int,
    *,
    digits: int = 6,
    algorithm: Algorithm = Algorithm.SHA1,
    period: int = DEFAULT_PERIOD,
    window: int = DEFAULT_TOTP_WINDOW,
    drift: int = 0,
) -> TotpMatch | None:
    """Accept ``code`` for a step within ``window`` steps of now (+ the token's drift).

    Only steps strictly after ``last_step`` (-1 for never used) are tried, so
    a code cannot be replayed, nor an older one used after a newer one.
    """
    check_period(period)
    check_totp_window(window)
    if not _well_formed(code, digits):
        return None
    now = time_step(unix_time, period)
    centre = now + max(-MAX_DRIFT_STEPS, min(MAX_DRIFT_STEPS, drift))
    low = max(centre - window, last_step + 1, 0)
    step = _find(key, code, range(low, centre + window + 1), digits, algorithm)
    if step is None:
        return None
    return TotpMatch(step=step, drift=max(-MAX_DRIFT_STEPS, min(MAX_DRIFT_STEPS, step - now)))


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def hotp_values(
    key: bytes,
    start: int,
    count: int,
    digits: int = 6,
    algorithm: Algorithm = Algorithm.SHA1,
) -> list[int]:
    """The codes of counters ``start`` .. ``start + count - 1`` as integers (the code before
    zero-padding), for searches over many counters (resynchronisation, claiming a token).

    The same values as :func:`hotp`, computed faster: the key's inner and outer HMAC pads
    are hashed once (RFC 2104) and each counter costs a copy of the two hash states and two
    short updates, instead of ``hmac.digest`` setting the key up again for every counter
    (about 2.2 -> 1.0 µs per counter: ``bench/hotp_search.py``).
    """
    if start < 0 or start + count > 1 << 64:
        raise ValueError("HOTP counter must fit in 64 bits")
    inner = hashlib.new(algorithm.digest)
    outer = hashlib.new(algorithm.digest)
    block = inner.block_size
    if len(key) > block:  # RFC 2104: a key longer than a block is hashed first
        key = hashlib.new(algorithm.digest, key).digest()
    padded = key.ljust(block, b"\0")
    inner.update(padded.translate(_IPAD))
    outer.update(padded.translate(_OPAD))
    inner_copy, outer_copy = inner.copy, outer.copy

    def mac(message: bytes) -> bytes:
        i = inner_copy()
        i.update(message)
        o = outer_copy()
        o.update(i.digest())
        return o.digest()

    modulus = 10**digits
    from_bytes = int.from_bytes
    return [
        (from_bytes(m[m[-1] & 0x0F : (m[-1] & 0x0F) + 4], "big") & 0x7FFFFFFF) % modulus
        for m in map(mac, map(_COUNTER.pack, range(start, start + count)))
    ]


def find_consecutive(
    key: bytes,
    codes: Sequence[str],
    last_counter: int,
    *,
    digits: int = 6,
    algorithm: Algorithm = Algorithm.SHA1,
    window: int = RESYNC_WINDOW,
) -> int | None:
    """The counter ``c`` of the first of ``codes`` when they are the codes of ``c``,
    ``c + 1``, ... in this order, with ``c`` in [last_counter + 1, last_counter + window];
    None otherwise (also for a malformed code, or none at all).

    The lowest such ``c`` wins.  ``c`` moves only forward: counters at or before
    ``last_counter`` are never tried.  The work does not depend on the codes nor on where
    (or whether) they match: every counter of the window is computed, every position is
    compared (no early exit), and only then is the first hit taken, so the time tells only
    the window's size.  Three codes in a row make a chance match across 100,000 counters
    negligible (about 1e5 / 1e18 for 6 digits).  The last code's counter, ``c + len - 1``,
    is never past MAX_COUNTER (the window is cut there).
    """
    run = len(codes)
    if run == 0 or not all(_well_formed(c, digits) for c in codes):
        return None
    start = last_counter + 1
    window = max(0, min(window, MAX_COUNTER - start - run + 2))
    values = hotp_values(key, start, window + run - 1, digits, algorithm)
    wanted = tuple(int(c) for c in codes)
    shifted = [values[i : i + window] for i in range(run)]
    hits = list(compress(range(window), map(wanted.__eq__, zip(*shifted, strict=True))))
    return start + hits[0] if hits else None


def resync_hotp(
    key: bytes,
    codes: tuple[str, str, str],
    last_counter: int,
    *,
    digits: int = 6,
    algorithm: Algorithm = Algorithm.SHA1,
    window: int = RESYNC_WINDOW,
) -> int | None:
    """Find three consecutive codes within ``window`` counters after ``last_counter``
    (:func:`find_consecutive`).

    Returns the counter of the third code (to store as the last accepted), or None.
    """
    first = find_consecutive(
        key, codes, last_counter, digits=digits, algorithm=algorithm, window=window
    )
    return None if first is None else first + len(codes) - 1
