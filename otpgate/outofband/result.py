"""What a send answers: which gateway delivered, or why each one failed.

Nothing here holds the message: a code or a scratch list never reaches a repr, a log line
or an exception text.  Reasons are the gateway's kind of failure ("refused", "timed out",
"TLS: certificate verify failed", "status 500"), built from the error's type and the
server's reply code, never from the message sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from otpgate.errors import OtpgateError


@dataclass(frozen=True)
class Attempt:
    gateway: str
    """The gateway's name: ``smtp://host:port`` or the SMS URL without its query."""
    reason: str
    """Why it failed; "" when it delivered."""


@dataclass(frozen=True)
class Delivery:
    """The outcome of one send over the gateways of one channel, tried in order."""

    channel: str
    """"email" or "sms"."""
    destination: str
    """The masked destination (``mask.py``)."""
    attempts: tuple[Attempt, ...]

    @property
    def delivered_by(self) -> str | None:
        last = self.attempts[-1] if self.attempts else None
        return last.gateway if last is not None and not last.reason else None

    @property
    def ok(self) -> bool:
        return self.delivered_by is not None

    def summary(self) -> str:
        if self.delivered_by is not None:
            return f"{self.channel} to {self.destination} delivered by {self.delivered_by}"
        if not self.attempts:
            return f"{self.channel} to {self.destination}: no gateway is configured"
        failures = "; ".join(f"{a.gateway}: {a.reason}" for a in self.attempts)
        return f"{self.channel} to {self.destination} failed on every gateway ({failures})"


class GatewayFailed(OtpgateError):
    """One gateway did not take the message; the text is a reason without the message."""


class DeliveryFailed(OtpgateError):
    """Every gateway failed: ``delivery`` says which and why."""

    def __init__(self, delivery: Delivery) -> None:
        super().__init__(delivery.summary())
        self.delivery = delivery
