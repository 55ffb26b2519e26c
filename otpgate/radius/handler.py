"""One Access-Request's login: the RADIUS front end's translation of a classified request
(PAP in append, challenge or otp-only mode; CHAP; MS-CHAPv2) into the pipeline's request
types, and of the pipeline's result into an Outcome (a reply code and attributes).  No
packet I/O here (``server.py``), no decision (``auth/``).

Codes sent by e-mail or SMS: PAP in append and challenge mode can ask for a code after the
password (``Channel.challenges``), so the pipeline may send one.  Its result's ``challenge``
text ("Code sent by SMS to +•••••89") becomes the Access-Challenge's Reply-Message, with a
State that the NAS returns with the code; that answer is a ``CodeOnly`` for the entry whose
password was checked, in both modes.  CHAP, MS-CHAPv2 and otp-only carry no password the
gateway could check first, so nothing is ever sent there."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Protocol

from otpgate.auth.pipeline import Authenticator
from otpgate.auth.requests import (
    Appended,
    AuthResult,
    Channel,
    CodeOnly,
    PasswordCheck,
    PasswordStep,
    Proof,
    Unusable,
)
from otpgate.config import Config
from otpgate.directory.pool import ServerPool
from otpgate.errors import MalformedPacket
from otpgate.radius.access import Chap, Login, MsChapV2, Pap
from otpgate.radius.challenge import ChallengeStore
from otpgate.radius.chap import MsChapV2Success, chap_proof, mschap2_proof
from otpgate.radius.config import RadiusClient
from otpgate.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    MS_CHAP2_SUCCESS,
    MS_CHAP_ERROR,
    MS_MPPE_ENCRYPTION_POLICY,
    MS_MPPE_ENCRYPTION_TYPES,
    MS_MPPE_RECV_KEY,
    MS_MPPE_SEND_KEY,
    REPLY_MESSAGE,
    SESSION_TIMEOUT,
    STATE,
    AttributeKey,
    Request,
    decrypt_password,
    integer,
    salt_encrypt,
    text,
)
from otpgate.stats import RadiusCounters

FRONT_END = "radius"
MPPE_ENCRYPTION_ALLOWED = 1
MPPE_TYPES_40_128 = 6  # what FreeRADIUS sends with require_strong = no
CHALLENGING_MODES = ("append", "challenge")
"""PAP modes that can answer with an Access-Challenge (and take its State back)."""


class GatewayLike(Protocol):
    """What the RADIUS front end needs of ``otpgate.service.Gateway``."""

    config: Config
    authenticator: Authenticator
    read_pool: ServerPool
    """Where new connections for users' password binds come from."""
    radius_counters: RadiusCounters
    """Counted here, read by /metrics."""

    async def check_password(self, dn: str, password: bytes) -> tuple[int, str]: ...


@dataclass(frozen=True)
class Outcome:
    code: int | None
    """ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE, or None for no reply."""
    attributes: tuple[tuple[AttributeKey, bytes], ...] = field(default=(), repr=False)


REJECT = Outcome(ACCESS_REJECT)
NO_REPLY = Outcome(None)


class AccessHandler:
    """One Access-Request's login, through the pipeline, to an Outcome (no packet I/O)."""

    def __init__(
        self,
        gateway: GatewayLike,
        challenges: ChallengeStore,
        clock: Any,
        check_password: PasswordCheck,
    ) -> None:
        self.gateway = gateway
        self.check_password = check_password
        self.config = gateway.config
        self.radius = gateway.config.radius
        self.authenticator = gateway.authenticator
        self.challenges = challenges
        self.clock = clock
        self._channels: dict[tuple[int, str], Channel] = {}

    async def handle(
        self, request: Request, login: Login, client: RadiusClient, source: str
    ) -> Outcome:
        if isinstance(login, Pap):
            return await self._pap(request, login, client, source)
        if isinstance(login, Chap):
            return await self._chap(login, client, source)
        if isinstance(login, MsChapV2):
            return await self._mschapv2(request, login, client, source)
        return await self._refuse(login, client, source, login.why)

    def _channel(self, client: RadiusClient, front_end: str = FRONT_END) -> Channel:
        """The NAS as the pipeline sees it (made once per NAS and front end)."""
        key = (id(client), front_end)
        channel = self._channels.get(key)
        if channel is None:
            proofs = frozenset(
                kind
                for kind, on in (("chap", client.allow_chap), ("mschapv2", client.allow_mschapv2))
                if on
            )
            name = client.name or str(client.network)
            # PAP append and challenge mode have the password and can answer with an
            # Access-Challenge: there a code may be sent after the password is checked.
            challenges = front_end == FRONT_END and client.mode in CHALLENGING_MODES
            channel = self._channels[key] = Channel(
                front_end, name=name, proofs=proofs, challenges=challenges
            )
        return channel

    async def _refuse(self, login: Login, client: RadiusClient, source: str, why: str) -> Outcome:
        """A request with nothing to log in with: the pipeline refuses and audits it."""
        nas = client.name or client.network
        await self.authenticator.login(
            Unusable(
                name=login.name,
                client=source,
                channel=self._channel(client),
                why=f"{why} (NAS {nas})",
            )
        )
        return REJECT

    async def _pap(
        self, request: Request, login: Pap, client: RadiusClient, source: str
    ) -> Outcome:
        try:
            secret = decrypt_password(
                login.hidden_password, client.secret, request.authenticator
            ).decode("utf-8")
        except (MalformedPacket, UnicodeDecodeError):
            return await self._refuse(login, client, source, "User-Password is not UTF-8 text")
        auth = self.authenticator
        channel = self._channel(client)
        if login.state is not None and client.mode in CHALLENGING_MODES:
            return await self._answer(login, login.state, secret, client, source)
        if client.mode == "append":
            result = await auth.login(
                Appended(
                    name=login.name,
                    client=source,
                    channel=channel,
                    typed=secret,
                    retransmission=self._identity(request, client, source),
                ),
                self.check_password,
            )
            if result.challenge and result.dn is not None:  # a code was sent: ask for it
                return self._challenge(login, result.dn, source, result.challenge)
            return self._counted(result)
        if client.mode == "otp-only":
            result = await auth.login(
                CodeOnly(
                    name=login.name,
                    client=source,
                    channel=channel,
                    code=secret,
                    retransmission=self._identity(request, client, source),
                )
            )
            return self._counted(result)
        # challenge mode, first step
        first = await auth.login(
            PasswordStep(
                name=login.name,
                client=source,
                channel=channel,
                password=secret,
                retransmission=self._identity(request, client, source),
            ),
            self.check_password,
        )
        if first.unavailable:
            return self._unavailable()
        if not first.ok:
            return REJECT
        if not first.needs_otp:
            return Outcome(ACCESS_ACCEPT)
        if first.dn is None:  # needs_otp comes with the entry's DN; refuse rather than guess
            return REJECT
        return self._challenge(login, first.dn, source, first.challenge)

    async def _answer(
        self, login: Pap, state: bytes, code: str, client: RadiusClient, source: str
    ) -> Outcome:
        """The answer to an Access-Challenge: the code, with the State issued for the entry
        whose password was checked (single use, same User-Name and NAS)."""
        pending = self.challenges.take(state, login.name, source, self.clock.seconds())
        if pending is None:
            return await self._refuse(login, client, source, "unknown, used or expired State")
        result = await self.authenticator.login(
            CodeOnly(name=pending.dn, client=source, channel=self._channel(client), code=code)
        )
        if result.unavailable:  # an outage must not cost the user the State
            self.challenges.restore(state, pending, self.clock.seconds())
        return self._finish(result)

    def _challenge(self, login: Pap, dn: str, source: str, sent: str) -> Outcome:
        """Access-Challenge with a new State for ``dn``; the Reply-Message says where a code
        was sent (``sent``), or asks for the code of the user's own device."""
        state = self.challenges.issue(login.name, dn, source, self.clock.seconds())
        return Outcome(
            ACCESS_CHALLENGE,
            (
                (REPLY_MESSAGE, text(sent or self.radius.challenge_message)),
                (STATE, state),
                (SESSION_TIMEOUT, integer(max(1, int(self.radius.challenge_timeout)))),
            ),
        )

    def _counted(self, result: AuthResult) -> Outcome:
        if result.ok and result.retransmission:
            self.gateway.radius_counters.failover_retransmissions += 1
        return self._finish(result)

    def _identity(self, request: Request, client: RadiusClient, source: str) -> bytes | None:
        """This exact request, for ``failover_replay_seconds``: the NAS address, Identifier
        and Request Authenticator (what an identical retransmission repeats), keyed with the
        NAS's shared secret; None when the option is off."""
        if self.radius.failover_replay_seconds <= 0:
            return None
        message = b"%s\x00%d\x00%s" % (source.encode(), request.id, request.authenticator)
        return hmac.digest(client.secret, b"otpgate radius request v1\x00" + message, "sha256")

    async def _chap(self, login: Chap, client: RadiusClient, source: str) -> Outcome:
        result = await self.authenticator.login(
            Proof(
                name=login.name,
                client=source,
                channel=self._channel(client, FRONT_END + "-chap"),
                kind="chap",
                check=chap_proof(login.chap_password, login.challenge),
            )
        )
        return self._finish(result)

    async def _mschapv2(
        self, request: Request, login: MsChapV2, client: RadiusClient, source: str
    ) -> Outcome:
        result = await self.authenticator.login(
            Proof(
                name=login.name,
                client=source,
                channel=self._channel(client, FRONT_END + "-mschapv2"),
                kind="mschapv2",
                check=mschap2_proof(login.raw_name, login.challenge, login.response),
            )
        )
        if result.unavailable:
            return self._unavailable()
        success = result.proof
        if not result.ok or not isinstance(success, MsChapV2Success):
            error = b"E=691 R=0 C=" + login.challenge.hex().upper().encode() + b" V=3 M=Denied"
            return Outcome(
                ACCESS_REJECT, ((MS_CHAP_ERROR, bytes((login.response.ident,)) + error),)
            )
        return Outcome(ACCESS_ACCEPT, self._mschapv2_attributes(request, client, success))

    @staticmethod
    def _mschapv2_attributes(
        request: Request, client: RadiusClient, success: MsChapV2Success
    ) -> tuple[tuple[AttributeKey, bytes], ...]:
        vector = request.authenticator
        return (
            (MS_CHAP2_SUCCESS, success.success),
            (MS_MPPE_RECV_KEY, salt_encrypt(success.recv_key, client.secret, vector)),
            (MS_MPPE_SEND_KEY, salt_encrypt(success.send_key, client.secret, vector)),
            (MS_MPPE_ENCRYPTION_POLICY, integer(MPPE_ENCRYPTION_ALLOWED)),
            (MS_MPPE_ENCRYPTION_TYPES, integer(MPPE_TYPES_40_128)),
        )

    def _unavailable(self) -> Outcome:
        return REJECT if self.radius.unavailable_reply == "reject" else NO_REPLY

    def _finish(self, result: AuthResult) -> Outcome:
        if result.unavailable:
            return self._unavailable()
        if not result.ok:
            return REJECT
        left = result.scratch_remaining
        if left is not None and left < self.config.otp.scratch_low_threshold:
            message = f"Only {left} scratch code{'s' if left != 1 else ''} left: print a new list"
            return Outcome(ACCESS_ACCEPT, ((REPLY_MESSAGE, text(message)),))
        return Outcome(ACCESS_ACCEPT)
