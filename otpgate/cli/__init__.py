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
import os
import select
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
    except BrokenPipeError as exc:
        if not _reader_gone():  # a directory connection, not our output
            return fail(args, exc, 1)
        # ``otpgate census ... | head``: the reader has what it wanted.  Point the output at
        # /dev/null so the interpreter's last flush does not fail again, and exit as a
        # process killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except (OtpgateError, OSError) as exc:  # the directory or the data say no
        return fail(args, exc, 1)
    except KeyboardInterrupt:
        print(f"otpgate {args.command}: interrupted", file=sys.stderr)
        return 130


def _reader_gone() -> bool:
    """Whether standard output is a pipe nobody reads any more (POLLERR on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError):
        return False
