"""Setting and clearing a user's PIN (pure): each returns the StateChange to write.

Shared by the CLI (``otpgate pin``), the portal's self-service page and the help desk.
The PIN goes into the seed's encrypted document and its keyed digest into the use state,
in one compare-and-swap write (``otpgate/pin.py`` says why both).  Never logged or audited.
"""

from __future__ import annotations

from dataclasses import replace

from otpgate.directory.records import OtpState, StateChange
from otpgate.errors import PolicyError
from otpgate.pin import NO_PIN, check_pin, new_pin


class PinRefused(PolicyError):
    """The PIN given is not one otpgate stores (the message never holds it)."""


def valid_pin(text: str, again: str | None = None) -> str:
    """``text`` as a PIN, or PinRefused; ``again``: the repeated entry must match."""
    try:
        check_pin(text)
    except ValueError as exc:
        raise PinRefused(str(exc)) from None
    if again is not None and again != text:
        raise PinRefused("the two PINs differ")
    return text


def set_pin_change(state: OtpState, pin: str, now: float) -> StateChange[bool]:
    """A new PIN (a new key with it); the result: whether one was set before."""
    record, verifier = new_pin(valid_pin(pin), now)
    had = state.used.pin is not None
    return StateChange(had, used=replace(state.used, pin=verifier), pin=record)


def clear_pin_change(state: OtpState) -> StateChange[bool]:
    """No PIN any more; the result: whether one was set."""
    had = state.used.pin is not None
    return StateChange(had, used=replace(state.used, pin=None), pin=NO_PIN)
