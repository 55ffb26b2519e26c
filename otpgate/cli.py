"""The ``otpgate`` command line: one sub-command per admin task.

Every command prints human output by default and exits non-zero with one
clear line on error (no traceback for a user mistake).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from otpgate.config import ConfigError, load_config
from otpgate.otp.oath import (
    DEFAULT_PERIOD,
    Algorithm,
    check_digits,
    check_period,
    hotp,
    time_step,
)
from otpgate.vault import VaultError, keygen


class UsageError(Exception):
    """A mistake in what the user asked for: printed as one line."""


def decode_base32(text: str) -> bytes:
    """Base32 as authenticator apps show it: any case, spaces, no padding."""
    cleaned = "".join(text.split()).upper().rstrip("=")
    try:
        return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError) as exc:
        raise UsageError("--secret is not valid Base32 (letters A-Z and digits 2-7)") from exc


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
    kid = args.key_id or time.strftime("k%Y%m%d%H%M%S")
    existed = path.exists()
    keygen(path, kid, make_current=not args.not_current)
    verb = "added key" if existed else "created keyring with key"
    print(f"{verb} {kid!r} in {path} (mode 0600)" + ("" if args.not_current else "; it is current"))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    print(
        f"{args.config}: OK (profile {config.directory.profile.name}, "
        f"{len(config.directory.urls)} directory URL(s))"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otpgate", description="One-time-password gateway for LDAP and Active Directory."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    code = sub.add_parser("code", help="print an HOTP/TOTP code, like oathtool")
    code.add_argument("--type", choices=("totp", "hotp"), default="totp")
    code.add_argument("--secret", required=True, help="the token's key in Base32")
    code.add_argument("--digits", type=int, default=6)
    code.add_argument("--algorithm", choices=[a.value for a in Algorithm], default="sha1")
    code.add_argument("--period", type=int, default=DEFAULT_PERIOD, help="TOTP period in seconds")
    code.add_argument("--time", type=int, help="TOTP: UNIX time to compute for (default: now)")
    code.add_argument("--counter", type=int, help="HOTP: the counter (default 0)")
    code.add_argument("--json", action="store_true")
    code.set_defaults(func=cmd_code)

    kg = sub.add_parser("keygen", help="create a keyring, or add a new current key to one")
    kg.add_argument("keyring", help="path of the keyring file (created with mode 0600)")
    kg.add_argument("--key-id", help="name of the new key (default: kYYYYmmddHHMMSS)")
    kg.add_argument(
        "--not-current",
        action="store_true",
        help="add the key without making it current (stage it on every gateway first)",
    )
    kg.set_defaults(func=cmd_keygen)

    cc = sub.add_parser("check-config", help="load and validate a config file")
    cc.add_argument("--config", required=True)
    cc.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UsageError, ConfigError, VaultError) as exc:
        print(f"otpgate {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
