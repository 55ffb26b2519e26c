"""Commands that need no directory: ``code`` (like oathtool), ``keygen``, ``check-config``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from otpgate.cli.base import UsageError, decode_base32
from otpgate.config import load_config
from otpgate.enforcement import warnings as enforcement_warnings
from otpgate.otp.oath import Algorithm, check_digits, check_period, hotp, time_step
from otpgate.vault import keygen, make_current


def cmd_code(args: argparse.Namespace) -> int:
    key = decode_base32(args.secret)
    if not key:
        raise UsageError("--secret is empty")
    algorithm = Algorithm(args.algorithm)
    try:
        check_digits(args.digits)
        check_period(args.period)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.type == "hotp":
        if args.time is not None:
            raise UsageError("--time is for --type totp; give --counter N for HOTP")
        counter = args.counter if args.counter is not None else 0
    else:
        if args.counter is not None:
            raise UsageError("--counter is for --type hotp; give --time UNIX for TOTP")
        now = args.time if args.time is not None else time.time()
        counter = time_step(now, args.period)
    if counter < 0:
        raise UsageError("the counter (or time) must not be negative")
    code = hotp(key, counter, args.digits, algorithm)
    if args.json:
        print(json.dumps({"code": code, "counter": counter}))
    else:
        print(code)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.keyring)
    if args.make_current:
        if args.key_id or args.not_current:
            raise UsageError("--make-current KID changes the current key; it takes no other option")
        before = make_current(path, args.make_current)
        if before == args.make_current:
            print(f"key {before!r} is already current in {path}")
        else:
            print(
                f"key {args.make_current!r} is now current in {path} (was {before!r}); "
                "copy the keyring to every gateway, then run `otpgate rekey`"
            )
        return 0
    kid = args.key_id or time.strftime("k%Y%m%d%H%M%S")
    existed = path.exists()
    keygen(path, kid, make_current=not args.not_current)
    verb = "added key" if existed else "created keyring with key"
    print(f"{verb} {kid!r} in {path} (mode 0600)" + ("" if args.not_current else "; it is current"))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    for line in config.deprecations:
        print(f"{args.config}: deprecated: {line}", file=sys.stderr)
    for line in enforcement_warnings(config):
        print(f"{args.config}: {line}", file=sys.stderr)
    print(
        f"{args.config}: OK (profile {config.directory.profile.name}, "
        f"{len(config.directory.urls)} directory URL(s))"
    )
    return 0
