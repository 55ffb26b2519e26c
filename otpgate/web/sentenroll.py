"""Enrolling an e-mail or SMS token from the portal: one flow, for the self-service page and
for the help desk.

1. the attribute the token names is chosen on the user's own entry (``choose_attribute``:
   ``[delivery] mail_attribute``, or the first of ``sms_attributes`` the entry has);
2. a new token and its key are made (``new_sent_token``), and a code is sent by the
   gateway's sender (``OutOfBandSender``), which reads and checks the destination itself;
3. the proof (``EnrollmentProof``: the code's digest, its expiry, three tries) stays in the
   server-side session, the code nowhere;
4. the code typed back (by the user, or by the help desk as the user reads it out) is
   checked, and only then is the token written, with one compare-and-swap
   (``sent_enroll_change``: it replaces the user's token of the same channel).

The enrollment sends are limited per entry like the sign-in sends (``[delivery]
send_cooldown`` and ``sends_per_hour``, counted in this process: the token is not written
yet, so there is no use state to count in) and take from the gateway's per-minute budget: a
user who may edit her own ``mobile`` cannot make the portal send to any number at will.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from otpgate.admin.sentcodes import (
    EnrollmentProof,
    choose_attribute,
    new_sent_token,
    sent_enroll_change,
    sent_kind,
)
from otpgate.auth.config import CodeRules
from otpgate.auth.oob import HOUR, sent_tokens
from otpgate.auth.requests import Sent
from otpgate.config import Config
from otpgate.directory.records import OtpState
from otpgate.dn import normalise_dn
from otpgate.errors import DirectoryError, PolicyError
from otpgate.outofband.mask import mask_email, mask_phone
from otpgate.tokens import Token, TokenType
from otpgate.web.sessions import PendingSent

CHANNELS = ("email", "sms")


class SentRefused(PolicyError):
    """The step was refused; the message is for the page.  ``sent``: the send it made
    (audited); ``over``: the proof is spent or expired (start again)."""

    def __init__(self, message: str, sent: Sent | None = None, over: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.over = over


class DestinationMoved(SentRefused):
    """The help desk is about to re-enroll a token whose destination changed since its
    enrollment: the agent must say the caller was verified by other means first."""


MOVED_WARNING = (
    "The {attribute} in the directory is not the one this user's {kind} token was enrolled "
    "with: it changed since. Users may be able to change it themselves (on Active "
    "Directory, by default), so whoever now asks may be someone with only the user's "
    "password who put their own {kind} destination there. Verify the caller by other means "
    "(in person, or by calling back a number from your HR records) before you continue."
)


class SendLimits:
    """Sends per key (an entry): ``cooldown`` seconds apart, at most ``per_hour`` in any
    hour.  Bounded to ``max_keys`` keys (the oldest go first)."""

    def __init__(self, cooldown: int, per_hour: int, max_keys: int = 100000) -> None:
        self.cooldown = cooldown
        self.per_hour = per_hour
        self.max_keys = max_keys
        self._sends: OrderedDict[str, deque[float]] = OrderedDict()

    def take(self, key: str, now: float) -> str | None:
        """Record a send for ``key``, or say why not (nothing recorded)."""
        sends = self._sends.get(key)
        if sends is None:
            if len(self._sends) >= self.max_keys:
                self._sends.popitem(last=False)
            sends = self._sends[key] = deque()
        while sends and now - sends[0] >= HOUR:
            sends.popleft()
        self._sends.move_to_end(key)
        if sends and now - sends[-1] < self.cooldown:
            wait = int(sends[-1] + self.cooldown - now) + 1
            return f"a code was sent moments ago: wait {wait} seconds before asking again"
        if len(sends) >= self.per_hour:
            return f"{self.per_hour} codes were sent in the last hour: try again later"
        sends.append(now)
        return None


def shown_destination(token: Token, values: Sequence[bytes] | None) -> str:
    """Where ``token``'s codes go, masked, from its attribute's values in the entry (None:
    they could not be read)."""
    if values is None:
        return "(could not be read)"
    if len(values) != 1:
        count = "no" if not values else str(len(values))
        return f"({count} {token.attribute} values)"
    text = bytes(values[0]).decode("utf-8", "replace").strip()
    return mask_phone(text) if token.type is TokenType.SMS else mask_email(text)


class SentEnroller:
    """The flow above over the gateway's directory, store and sender."""

    def __init__(self, gateway: Any, config: Config) -> None:
        self.gateway = gateway
        self.delivery = config.delivery
        rules = self.delivery.codes if self.delivery is not None else CodeRules()
        self.rules = rules
        self.limits = SendLimits(rules.cooldown, rules.per_hour)

    async def _moved(self, dn: str, token_type: TokenType, sender: Any) -> bool:
        """The user's current token of this channel no longer matches the entry's value."""
        store = self.gateway.store
        try:
            state = store.decode(await store.resolve(dn, fresh=True))
        except (DirectoryError, PolicyError):
            return True  # cannot tell: ask for the verification
        for token in state.tokens:
            secret = state.secrets.get(token.id)
            if token.type is token_type and secret is not None:
                return bool(await sender.moved(dn, token, secret))
        return False

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels a token can be enrolled for: gateways configured, a sender running."""
        delivery = self.delivery
        if delivery is None or self.gateway.code_sender is None:
            return ()
        return tuple(c for c in CHANNELS if delivery.can_send(c))

    async def start(
        self,
        dn: str,
        user: str,
        kind: str,
        now: float,
        helpdesk: bool = False,
        verified: bool = False,
    ) -> tuple[PendingSent, Sent]:
        """Send the code that proves a new ``kind`` token of the entry ``dn`` (``user``: its
        name for the message and the audit).  SentRefused when nothing can be sent or no
        gateway took it (nothing is written either way)."""
        delivery, sender = self.delivery, self.gateway.code_sender
        if kind not in self.channels or delivery is None or sender is None:
            raise SentRefused("Codes cannot be sent by that channel here.")
        token_type = sent_kind(kind)
        attributes = (
            [delivery.mail_attribute] if token_type is TokenType.EMAIL
            else list(delivery.sms_attributes)
        )  # fmt: skip
        try:
            values = {a: await self.gateway.entry_values(dn, a) for a in attributes}
            attribute = choose_attribute(
                token_type, delivery.mail_attribute, delivery.sms_attributes, values
            )
        except (DirectoryError, PolicyError) as exc:
            raise SentRefused(f"No code was sent: {exc}.") from None
        if helpdesk and not verified and await self._moved(dn, token_type, sender):
            what = "SMS" if token_type is TokenType.SMS else "e-mail"
            raise DestinationMoved(MOVED_WARNING.format(attribute=attribute, kind=what))
        why = self.limits.take(normalise_dn(dn), now)
        if why is None and not sender.take_budget(now):
            why = "the gateway is sending too many codes right now: try again in a minute"
        if why is not None:
            raise SentRefused(f"No code was sent: {why}.", Sent(kind, "", "limited", detail=why))
        token, secret = new_sent_token(token_type, attribute, self.rules.digits, now=now)
        proof, code = EnrollmentProof.start(token, secret, now, self.rules.lifetime)
        sent = await sender.send(dn, user, token, secret, code)
        del code
        if sent.outcome != "sent":
            to = f" to {sent.destination}" if sent.destination else ""
            raise SentRefused(
                f"The code could not be sent{to}: {sent.detail or sent.outcome}.", sent
            )
        proof.delivered(sent)  # the token is bound to the destination the code went to
        return PendingSent(proof, dn, user, sent.destination, helpdesk), sent

    async def finish(self, pending: PendingSent, code: str, now: float) -> Token:
        """Check the code typed back, then write the token (one compare-and-swap)."""
        proof = pending.proof
        given = code.strip().replace(" ", "")
        if not proof.check(given, now):
            if proof.void or now >= proof.expires:
                raise SentRefused(
                    "That code is no longer valid (expired, or three wrong tries): send a "
                    "new one.",
                    over=True,
                )
            raise SentRefused("That code is not right; type the one that was sent.")
        store = self.gateway.store
        user = await store.resolve(pending.dn, fresh=True)
        token: Token
        token, _user = await store.update(
            user, lambda state: sent_enroll_change(state, proof.token, proof.secret)
        )
        return token

    async def destinations(self, dn: str, state: OtpState) -> dict[str, str]:
        """Token id -> masked destination, for each e-mail/SMS token of ``state``."""
        shown = {}
        for token in sent_tokens(state):
            try:
                values: list[bytes] | None = await self.gateway.entry_values(dn, token.attribute)
            except DirectoryError:
                values = None
            shown[token.id] = shown_destination(token, values)
        return shown
