"""The ``otpgate`` command line: one sub-command per admin task.

Every command prints human output by default and JSON with ``--json``, and exits
non-zero with one clear line on standard error (no traceback for a user mistake):
2 for a usage or configuration error, 1 when the directory or the data say no.

Directory commands run synchronously over ldap3 (``otpgate.directory.sync``), driving the
same pure mapping and compare-and-swap planning as the gateway.  ``test-auth`` runs the
gateway's own async pipeline under the Twisted reactor.

Layout: ``base`` (the parser, printing, errors, prompts, :class:`Admin`) and one module per
group of commands, imported only when one of its commands runs: ``offline`` (code, keygen,
check-config), ``users`` (enroll, show, list, revoke, reset, resync, unlock, scratch;
with ``sentcodes`` for e-mail/SMS tokens and ``scratchmail`` for ``scratch --mail``),
``suspend`` (suspend, resume, lost), ``apppasswords`` (app-password),
``inventory`` (import, assign, rename, delete, inventory), ``keys`` (rekey),
``diagnose`` (doctor, test-auth) and ``census`` (census: audit files only, no config).
What the commands do is ``otpgate.admin``'s (``otpgate.census``'s for the census); they parse
their arguments, call it and print.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from otpgate.cli.base import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    Admin,
    CommandFailed,
    UsageError,
    admin,
    build_parser,
    decode_base32,
    emit,
    fail,
    prompt_secret,
    read_secret_file,
)
from otpgate.errors import ConfigError, OtpgateError, VaultError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "Admin",
    "CommandFailed",
    "UsageError",
    "admin",
    "build_parser",
    "decode_base32",
    "emit",
    "main",
    "prompt_secret",
    "read_secret_file",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UsageError, ConfigError, VaultError) as exc:
        return fail(args, exc, 2)
    except (OtpgateError, OSError) as exc:  # the directory or the data say no
        return fail(args, exc, 1)
    except KeyboardInterrupt:
        print(f"otpgate {args.command}: interrupted", file=sys.stderr)
        return 130
