"""Diagnosis: ``doctor`` (the live directory, ``otpgate.admin.doctor_live``) and
``test-auth`` (a real login through the gateway's own async pipeline, under the Twisted
reactor, reported step by step)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from otpgate import cli
from otpgate.cli.base import CommandFailed, admin, emit
from otpgate.config import Config, load_config
from otpgate.tokens import escape_unsafe as printable

if TYPE_CHECKING:
    from otpgate.service import Gateway


def cmd_doctor(args: argparse.Namespace) -> int:
    from otpgate.admin.doctor import failed, render
    from otpgate.admin.doctor_live import Doctor

    password = None
    if args.test_password_file:
        password = cli.read_secret_file(args.test_password_file)
    elif args.test_user and sys.stdin.isatty():
        password = cli.prompt_secret(f"password of {args.test_user}: ")
    with admin(args) as ctx:
        say: Callable[[str], None] | None = None
        if not args.json and sys.stderr.isatty():

            def say(text: str) -> None:
                print(f"... {text}", file=sys.stderr)

        configs = [Path(p) for p in args.slapd_config]
        checks = Doctor(ctx.config, ctx.store, args.test_user, password, say, configs).run()
    emit(args, {"checks": [c.to_dict() for c in checks], "ok": not failed(checks)}, render(checks))
    if failed(checks):
        count = sum(1 for c in checks if c.status.value == "fail")
        raise CommandFailed(f"{count} check(s) failed; see the fixes above")
    return 0


# -- test-auth ---------------------------------------------------------------------------


def cmd_test_auth(args: argparse.Namespace) -> int:
    from twisted.internet import task

    if args.password_file:
        password = cli.read_secret_file(args.password_file)
    else:
        password = cli.prompt_secret(f"password of {args.user}: ")
    otp = (args.otp if args.otp is not None else cli.prompt_secret("OTP: ")).strip()
    config = load_config(Path(args.config))
    from otpgate.vault import Keyring

    keyring = Keyring.load(config.keyring)
    out = sys.stdout
    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        outcome["code"] = await _test_auth(reactor, config, keyring, args, password, otp, out)

    try:
        task.react(lambda reactor: _deferred(run(reactor)))
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 1
    return int(outcome.get("code", 1))


def _deferred(coro: Any) -> Any:
    from twisted.internet import defer

    return defer.ensureDeferred(coro)


async def _test_auth(
    reactor: Any,
    config: Config,
    keyring: Any,
    args: argparse.Namespace,
    password: str,
    otp: str,
    out: TextIO,
) -> int:
    from otpgate.service import Gateway

    steps: list[dict[str, Any]] = []

    def step(name: str, ok: bool | None, detail: str) -> None:
        steps.append({"step": name, "ok": ok, "detail": detail})
        if not args.json:
            mark = {True: "[ ok ]", False: "[FAIL]", None: "[info]"}[ok]
            out.write(f"{mark} {name}: {printable(detail)}\n")
            out.flush()

    gateway = Gateway(config, keyring, reactor)
    result_ok = False
    try:
        result_ok = await _walk(gateway, reactor, args, password, otp, step)
    finally:
        if gateway.low_scratch_mailer is not None:  # a warning this login claimed goes out
            await gateway.low_scratch_mailer.drain()
        gateway.close()
    if args.json:
        out.write(json.dumps({"user": args.user, "ok": result_ok, "steps": steps}, indent=2) + "\n")
    return 0 if result_ok else 1


Step = Callable[[str, bool | None, str], None]
"""Reports one step: its name, ok / failed / None (information), the detail."""


async def _walk(
    gateway: Gateway,
    reactor: Any,
    args: argparse.Namespace,
    password: str,
    otp: str,
    step: Step,
) -> bool:
    """The login of ``args.user`` through ``gateway``'s pipeline (``Authenticator.login``
    with a trace: the real steps it went through, not a copy of them); whether the pipeline
    accepted it."""
    from otpgate.auth.requests import Channel, Separate
    from otpgate.auth.requests import Step as Done

    request = Separate(
        name=args.user,
        client=args.client,
        channel=Channel("test-auth"),
        password=password,
        code=otp,
    )
    steps: list[Done] = []
    result = await gateway.authenticator.login(request, gateway.check_password, trace=steps)
    for done in steps:
        step(done.name, done.ok, done.detail)
    return result.ok
