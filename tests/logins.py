"""Short constructors of the pipeline's request types, for tests."""

from __future__ import annotations

from typing import Any

from otpgate.auth.requests import (
    Appended,
    Channel,
    CodeOnly,
    FirstEnrollment,
    PasswordStep,
    Proof,
    Separate,
)


def appended(name: str, typed: str, client: str | None = "127.0.0.1", front_end: str = "test",
             **kw: Any) -> Appended:
    return Appended(name=name, typed=typed, client=client, channel=Channel(front_end), **kw)


def code_only(name: str, code: str, client: str | None = "127.0.0.1", front_end: str = "test",
              **kw: Any) -> CodeOnly:
    return CodeOnly(name=name, code=code, client=client, channel=Channel(front_end), **kw)


def separate(name: str, password: str, code: str, client: str | None = "127.0.0.1",
             front_end: str = "test", **kw: Any) -> Separate:
    return Separate(name=name, password=password, code=code, client=client,
                    channel=Channel(front_end), **kw)


def password_step(name: str, password: str, client: str | None = "127.0.0.1",
                  front_end: str = "radius") -> PasswordStep:
    return PasswordStep(name=name, password=password, client=client, channel=Channel(front_end))


def proof(name: str, kind: str, check: Any, client: str | None = "127.0.0.1") -> Proof:
    channel = Channel("radius-" + kind, proofs=frozenset({kind}))
    return Proof(name=name, kind=kind, check=check, client=client, channel=channel)


def first_enrollment(name: str, password: str, client: str | None = "127.0.0.1",
                     network: str | None = "127.0.0.1") -> FirstEnrollment:
    return FirstEnrollment(name=name, password=password, client=client, channel=Channel("web"),
                           network=network)
