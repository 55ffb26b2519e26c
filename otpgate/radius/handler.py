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
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from otpgate.auth.pipeline import Authenticator
from otpgate.auth.requests import (
    Appended,
    Authorize,
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
    CLASS,
    MS_CHAP2_SUCCESS,
    MS_CHAP_ERROR,
    MS_MPPE_ENCRYPTION_POLICY,
    MS_MPPE_ENCRYPTION_TYPES,
    MS_MPPE_RECV_KEY,
    MS_MPPE_SEND_KEY,
    PROXY_STATE,
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
from otpgate.radius.reply import MAX_REPLY
from otpgate.stats import RadiusCounters

FRONT_END = "radius"
MPPE_ENCRYPTION_ALLOWED = 1
MPPE_TYPES_40_128 = 6  # what FreeRADIUS sends with require_strong = no
CHALLENGING_MODES = ("append", "challenge")
"""PAP modes that can answer with an Access-Challenge (and take its State back)."""
CLASS_PREFIX = b"otpgate:"
"""Every Access-Accept carries Class = otpgate:<login id>, the id its audit event records as
``login_id``: the NAS repeats Class in its accounting records (RFC 2865 section 5.25), which
so join the login.  Random per login, nothing of the user in it."""


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
    encoded: bytes = field(default=b"", repr=False)
    """Attributes already on the wire, after ``attributes`` (the NAS's reply rules)."""


REJECT = Outcome(ACCESS_REJECT)
NO_REPLY = Outcome(None)


@dataclass(frozen=True)
class Grant:
    """What one request's Access-Accept needs besides the pipeline's result."""

    login_id: str
    """Audited with the login, sent as its Class."""
    authorize: Authorize | None
    """The NAS's reply rules for this request (None: it has none)."""
    client: RadiusClient


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
        grant = Grant(secrets.token_hex(12), self._authorize(request, client), client)
        if isinstance(login, Pap):
            return await self._pap(request, login, client, source, grant)
        if isinstance(login, Chap):
            return await self._chap(login, client, source, grant)
        if isinstance(login, MsChapV2):
            return await self._mschapv2(request, login, client, source, grant)
        return await self._refuse(login, client, source, login.why, grant)

    @staticmethod
    def _authorize(request: Request, client: RadiusClient) -> Authorize | None:
        """The NAS's reply rules for this request (None without rules), with the room its
        Proxy-States leave."""
        rules = client.reply
        if rules is None:
            return None
        if not OrderedDict.__contains__(request.packet, PROXY_STATE):
            return rules.reply
        room = MAX_REPLY - sum(len(v) + 2 for v in request.values(PROXY_STATE))
        return partial(rules.reply, room=room)

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
            name = client.nas_name
            # PAP append and challenge mode have the password and can answer with an
            # Access-Challenge: there a code may be sent after the password is checked.
            challenges = front_end == FRONT_END and client.mode in CHALLENGING_MODES
            # No password arrives in otp-only mode, CHAP or MS-CHAPv2: a PIN goes first.
            pin = front_end != FRONT_END or client.mode == "otp-only"
            channel = self._channels[key] = Channel(
                front_end,
                name=name,
                proofs=proofs,
                challenges=challenges,
                allow_groups=client.allow_groups,
                deny_groups=client.deny_groups,
                pin=pin,
                require_pin=pin and client.require_pin,
                where=name,
                enforce=client.enforce,
            )
        return channel

    async def _refuse(
        self, login: Login, client: RadiusClient, source: str, why: str, grant: Grant
    ) -> Outcome:
        """A request with nothing to log in with: the pipeline refuses and audits it."""
        nas = client.nas_name
        await self.authenticator.login(
            Unusable(
                name=login.name,
                client=source,
                channel=self._channel(client),
                why=f"{why} (NAS {nas})",
                login_id=grant.login_id,
            )
        )
        return REJECT

    async def _pap(
        self, request: Request, login: Pap, client: RadiusClient, source: str, grant: Grant
    ) -> Outcome:
        try:
            secret = decrypt_password(
                login.hidden_password, client.secret, request.authenticator
            ).decode("utf-8")
        except (MalformedPacket, UnicodeDecodeError):
            why = "User-Password is not UTF-8 text"
            return await self._refuse(login, client, source, why, grant)
        auth = self.authenticator
        channel = self._channel(client)
        if login.state is not None and client.mode in CHALLENGING_MODES:
            return await self._answer(login, login.state, secret, client, source, grant)
        if client.mode == "append":
            result = await auth.login(
                Appended(
                    name=login.name,
                    client=source,
                    channel=channel,
                    typed=secret,
                    retransmission=self._identity(request, client, source),
                    login_id=grant.login_id,
                    authorize=grant.authorize,
                ),
                self.check_password,
            )
            if result.challenge and result.dn is not None:  # a code was sent: ask for it
                return self._challenge(login, result.dn, source, result.challenge)
            return self._counted(result, grant)
        if client.mode == "otp-only":
            result = await auth.login(
                CodeOnly(
                    name=login.name,
                    client=source,
                    channel=channel,
                    code=secret,
                    retransmission=self._identity(request, client, source),
                    login_id=grant.login_id,
                    authorize=grant.authorize,
                )
            )
            return self._counted(result, grant)
        # challenge mode, first step
        first = await auth.login(
            PasswordStep(
                name=login.name,
                client=source,
                channel=channel,
                password=secret,
                retransmission=self._identity(request, client, source),
                login_id=grant.login_id,
                authorize=grant.authorize,
            ),
            self.check_password,
        )
        if first.unavailable:
            return self._unavailable()
        if not first.ok:
            return REJECT
        if not first.needs_otp:
            return self._accept(first, grant)
        if first.dn is None:  # needs_otp comes with the entry's DN; refuse rather than guess
            return REJECT
        return self._challenge(login, first.dn, source, first.challenge)

    async def _answer(
        self,
        login: Pap,
        state: bytes,
        code: str,
        client: RadiusClient,
        source: str,
        grant: Grant,
    ) -> Outcome:
        """The answer to an Access-Challenge: the code, with the State issued for the entry
        whose password was checked (single use, same User-Name and NAS)."""
        pending = self.challenges.take(state, login.name, source, self.clock.seconds())
        if pending is None:
            why = "unknown, used or expired State"
            return await self._refuse(login, client, source, why, grant)
        result = await self.authenticator.login(
            CodeOnly(
                name=pending.dn,
                client=source,
                channel=self._channel(client),
                code=code,
                login_id=grant.login_id,
                authorize=grant.authorize,
            )
        )
        if result.unavailable:  # an outage must not cost the user the State
            self.challenges.restore(state, pending, self.clock.seconds())
        return self._finish(result, grant)

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

    def _counted(self, result: AuthResult, grant: Grant) -> Outcome:
        if result.ok and result.retransmission:
            self.gateway.radius_counters.failover_retransmissions += 1
        return self._finish(result, grant)

    def _identity(self, request: Request, client: RadiusClient, source: str) -> bytes | None:
        """This exact request, for ``failover_replay_seconds``: the NAS address, Identifier
        and Request Authenticator (what an identical retransmission repeats), keyed with the
        NAS's shared secret; None when the option is off."""
        if self.radius.failover_replay_seconds <= 0:
            return None
        message = b"%s\x00%d\x00%s" % (source.encode(), request.id, request.authenticator)
        return hmac.digest(client.secret, b"otpgate radius request v1\x00" + message, "sha256")

    async def _chap(self, login: Chap, client: RadiusClient, source: str, grant: Grant) -> Outcome:
        result = await self.authenticator.login(
            Proof(
                name=login.name,
                client=source,
                channel=self._channel(client, FRONT_END + "-chap"),
                kind="chap",
                check=chap_proof(login.chap_password, login.challenge),
                login_id=grant.login_id,
                authorize=grant.authorize,
            )
        )
        return self._finish(result, grant)

    async def _mschapv2(
        self, request: Request, login: MsChapV2, client: RadiusClient, source: str, grant: Grant
    ) -> Outcome:
        result = await self.authenticator.login(
            Proof(
                name=login.name,
                client=source,
                channel=self._channel(client, FRONT_END + "-mschapv2"),
                kind="mschapv2",
                check=mschap2_proof(login.raw_name, login.challenge, login.response),
                login_id=grant.login_id,
                authorize=grant.authorize,
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
        return self._accept(result, grant, self._mschapv2_attributes(request, client, success))

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

    def _finish(self, result: AuthResult, grant: Grant) -> Outcome:
        if result.unavailable:
            return self._unavailable()
        if not result.ok:
            return REJECT
        return self._accept(result, grant)

    def _accept(
        self,
        result: AuthResult,
        grant: Grant,
        own: tuple[tuple[AttributeKey, bytes], ...] = (),
    ) -> Outcome:
        """The Access-Accept: ``own`` (MS-CHAPv2's answer), the low-scratch warning and the
        NAS's ``accept_message`` (Reply-Message), Class = otpgate:<login id>, then what the
        NAS's reply rules gave this entry (``result.authorized``).  A Reject carries none of
        it: its reason stays in the audit trail."""
        attributes = list(own)
        left = result.scratch_remaining
        if left is not None and left < self.config.otp.scratch_low_threshold:
            message = f"Only {left} scratch code{'s' if left != 1 else ''} left: print a new list"
            attributes.append((REPLY_MESSAGE, text(message)))
        if grant.client.accept_message:
            attributes.append((REPLY_MESSAGE, text(grant.client.accept_message)))
        attributes.append((CLASS, CLASS_PREFIX + grant.login_id.encode()))
        return Outcome(ACCESS_ACCEPT, tuple(attributes), result.authorized or b"")
