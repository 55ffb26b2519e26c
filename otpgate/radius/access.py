"""What an Access-Request asks for: which authentication method, with which values.  Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from otpgate.errors import MalformedPacket
from otpgate.radius.chap import (
    CHAP_RESPONSE_LENGTH,
    MSCHAP2_RESPONSE_LENGTH,
    MSCHAP_CHALLENGE_LENGTH,
    MsChapV2Response,
)
from otpgate.radius.packet import (
    CHAP_CHALLENGE,
    CHAP_PASSWORD,
    EAP_MESSAGE,
    MAX_TEXT_LENGTH,
    MS_CHAP2_RESPONSE,
    MS_CHAP_CHALLENGE,
    MS_CHAP_RESPONSE,
    STATE,
    USER_NAME,
    USER_PASSWORD,
    Request,
)


@dataclass(frozen=True)
class Pap:
    name: str
    hidden_password: bytes = field(repr=False)
    state: bytes | None = None


@dataclass(frozen=True)
class Chap:
    name: str
    chap_password: bytes = field(repr=False)
    challenge: bytes


@dataclass(frozen=True)
class MsChapV2:
    name: str
    raw_name: bytes
    challenge: bytes
    response: MsChapV2Response = field(repr=False)


@dataclass(frozen=True)
class Unsupported:
    name: str
    why: str


Login = Pap | Chap | MsChapV2 | Unsupported


def user_name(request: Request) -> tuple[str, bytes]:
    """The User-Name as text and as sent; empty if missing or not UTF-8 text."""
    raw = request.one(USER_NAME) or b""
    if len(raw) > MAX_TEXT_LENGTH or b"\x00" in raw:
        return "", raw
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError:
        return "", raw


def classify(request: Request) -> Login:
    """The login an Access-Request carries.

    Raises MalformedPacket for attributes a well-formed request cannot have
    (repeated single-valued ones, wrong lengths): such packets are dropped.
    """
    name, raw_name = user_name(request)
    password = request.one(USER_PASSWORD)
    chap = request.one(CHAP_PASSWORD)
    ms_response = request.one(MS_CHAP2_RESPONSE)
    methods = sum(x is not None for x in (password, chap, ms_response))
    if not name:
        return Unsupported(name, "no usable User-Name")
    if request.has(EAP_MESSAGE):
        return Unsupported(name, "EAP is not supported")
    if methods > 1:
        return Unsupported(name, "more than one of User-Password, CHAP-Password, MS-CHAP2-Response")
    if password is not None:
        return Pap(name, password, request.one(STATE))
    if chap is not None:
        if len(chap) != CHAP_RESPONSE_LENGTH:
            raise MalformedPacket(f"CHAP-Password of {len(chap)} octets")
        challenge = request.one(CHAP_CHALLENGE)
        return Chap(name, chap, request.authenticator if challenge is None else challenge)
    if ms_response is not None:
        challenge = request.one(MS_CHAP_CHALLENGE)
        if challenge is None or len(challenge) != MSCHAP_CHALLENGE_LENGTH:
            raise MalformedPacket("MS-CHAP2-Response without a 16-octet MS-CHAP-Challenge")
        if len(ms_response) != MSCHAP2_RESPONSE_LENGTH:
            raise MalformedPacket(f"MS-CHAP2-Response of {len(ms_response)} octets")
        return MsChapV2(name, raw_name, challenge, MsChapV2Response.parse(ms_response))
    if request.has(MS_CHAP_RESPONSE):
        return Unsupported(name, "MS-CHAP (v1) is not supported")
    return Unsupported(name, "no User-Password, CHAP-Password or MS-CHAP2-Response")
