"""``otpgate enroll USER --type email|sms``: a token whose codes are sent to the user,
written only once the code sent to its destination is typed back.

The order leaves the directory unchanged until the destination is proven:

1. the config must name a gateway of that channel (``[[delivery.smtp]]``; for SMS
   ``[[delivery.sms_http]]`` or ``[delivery.sms_email]``); the token names ``--attribute``,
   else ``[delivery] mail_attribute`` for e-mail and the first of ``sms_attributes`` the
   entry has for SMS (``admin.sentcodes.choose_attribute``);
2. a code is sent through the gateway's own sender (``outofband.codes.OutOfBandSender``:
   the destination read from the entry, exactly one value, an SMS number within
   ``sms_country_prefixes``); the command prints the masked destination and the gateway
   that took it, never the code;
3. the code is typed back (asked for on a terminal, one line each from a pipe): at most
   ``PROOF_ATTEMPTS`` wrong ones, before it expires (``[delivery] code_lifetime``);
4. only then is the token written, with one compare-and-swap (``sent_enroll_change``: it
   replaces the user's token of the same channel).

Whatever stops it before step 4 writes nothing and says why in one line.  The send is not
one of the user's sends at login (no cooldown or hourly limit applies, nothing is recorded
in the use state): it is an administrator's action, once per command.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from otpgate import cli
from otpgate.cli.base import Admin, CommandFailed, UsageError, admin, emit, run_reactor
from otpgate.errors import PolicyError
from otpgate.tokens import ATTRIBUTE_NAME, TokenType
from otpgate.tokens import escape_unsafe as printable

if TYPE_CHECKING:
    from otpgate.admin.sentcodes import EnrollmentProof
    from otpgate.auth.requests import Sent
    from otpgate.directory.records import OtpState, StateChange, UserEntry
    from otpgate.outofband.config import DeliveryConfig
    from otpgate.tokens import Secret, Token

GATEWAY_KEYS = {
    "email": "[[delivery.smtp]]",
    "sms": "[[delivery.sms_http]] or [delivery.sms_email]",
}
CHANNEL_NAMES = {"email": "e-mail", "sms": "SMS"}
OATH_ONLY = (
    ("secret", "--secret"),
    ("digits", "--digits"),
    ("algorithm", "--algorithm"),
    ("period", "--period"),
    ("qr", "--qr"),
    ("keep_existing", "--keep-existing"),
)
"""Options of ``enroll`` that mean nothing for a token whose codes are sent."""
UNCHANGED = "nothing was changed"


def check_options(args: argparse.Namespace) -> None:
    """UsageError for an option that does not apply to ``--type email|sms``."""
    for name, option in OATH_ONLY:
        if getattr(args, name, None):
            raise UsageError(f"{option} is for totp/hotp tokens, not --type {args.type}")
    if args.attribute is not None and not ATTRIBUTE_NAME.match(args.attribute):
        raise UsageError(f"--attribute {args.attribute!r} is not an attribute name")


def delivery_for(delivery: DeliveryConfig | None, kind: TokenType) -> DeliveryConfig:
    """The ``[delivery]`` section when it can send by ``kind``'s channel, else a UsageError
    naming the key that is missing."""
    channel = kind.value
    if delivery is None or not delivery.can_send(channel):
        raise UsageError(
            f"--type {channel} needs {GATEWAY_KEYS[channel]} in the config "
            f"(no {CHANNEL_NAMES[channel]} gateway); {UNCHANGED}"
        )
    return delivery


def pick_attribute(
    name: str,
    kind: TokenType,
    given: str | None,
    delivery: DeliveryConfig,
    read: Callable[[Sequence[str]], Mapping[str, Sequence[bytes]]],
) -> str:
    """The attribute the new token names: ``given``, else the configured one
    (``choose_attribute``; ``read`` gives the entry's values of the SMS candidates)."""
    from otpgate.admin.sentcodes import choose_attribute

    if given:
        return given
    if kind is TokenType.EMAIL:
        return delivery.mail_attribute
    values = read(delivery.sms_attributes)
    try:
        return choose_attribute(kind, delivery.mail_attribute, delivery.sms_attributes, values)
    except PolicyError as exc:
        raise CommandFailed(f"{name}: {exc} ([delivery] sms_attributes); {UNCHANGED}") from None


def refusal(sent: Sent) -> str:
    """Why the code did not go out: the destination's fault or each gateway's reason."""
    name = CHANNEL_NAMES.get(sent.channel, sent.channel)
    if sent.outcome == "refused":
        return f"no {name} code was sent: {sent.detail}; {UNCHANGED}"
    to = f" to {sent.destination}" if sent.destination else ""
    return f"the {name} code could not be sent{to} ({sent.detail or sent.outcome}); {UNCHANGED}"


def read_line(prompt: str) -> str | None:
    """One answer: asked for without echo on a terminal, one line from a pipe; None at
    the end of the input."""
    if sys.stdin.isatty():
        try:
            return cli.prompt_secret(prompt)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


def prove(
    proof: EnrollmentProof,
    ask: Callable[[str], str | None],
    say: Callable[[str], None],
    clock: Callable[[], float],
    prompt: str,
) -> None:
    """Ask for the code until ``proof`` holds; CommandFailed when the input ends, the code
    expires or ``PROOF_ATTEMPTS`` wrong codes were typed.  An empty line is no attempt."""
    from otpgate.admin.sentcodes import PROOF_ATTEMPTS

    while True:
        typed = ask(prompt)
        if typed is None:
            raise CommandFailed(f"no code was typed back: the token was not enrolled; {UNCHANGED}")
        now = clock()
        if now >= proof.expires:
            raise CommandFailed(
                "the code expired ([delivery] code_lifetime): the token was not enrolled; "
                f"{UNCHANGED}"
            )
        if not typed.strip():
            continue
        if proof.check(typed, now):
            return
        if proof.void:
            raise CommandFailed(
                f"wrong code {PROOF_ATTEMPTS} times: the token was not enrolled; {UNCHANGED}"
            )
        left = PROOF_ATTEMPTS - proof.attempts
        say(f"wrong code; {left} more {'try' if left == 1 else 'tries'}")


def enroll_change(
    token: Token, secret: Secret
) -> Callable[[OtpState], StateChange[tuple[Token, tuple[Token, ...]]]]:
    """``sent_enroll_change``, also returning the tokens it replaces (for the output)."""
    from otpgate.admin.sentcodes import sent_enroll_change
    from otpgate.directory.records import StateChange

    def change(state: OtpState) -> StateChange[tuple[Token, tuple[Token, ...]]]:
        gone = tuple(t for t in state.tokens if t.type is token.type)
        done = sent_enroll_change(state, token, secret)
        return StateChange((done.result, gone), done.used, done.tokens, done.secrets)

    return change


def send_code(
    ctx: Admin,
    delivery: DeliveryConfig,
    user: UserEntry,
    name: str,
    token: Token,
    secret: Secret,
    code: str,
) -> Sent:
    """One send through the gateway's sender, the reactor run for it."""
    from otpgate.outofband.codes import OutOfBandSender

    async def read_values(dn: str, attribute: str) -> list[bytes]:
        return ctx.entry_values(dn, [attribute])[attribute]

    issuer = ctx.config.otp.issuer
    return run_reactor(
        lambda reactor: OutOfBandSender(reactor, delivery, issuer, read_values).send(
            user.dn, name, token, secret, code
        ),
        f"the code could not be sent (internal error); {UNCHANGED}",
    )


def refuse_moved(
    ctx: Admin, delivery: DeliveryConfig, user: UserEntry, kind: TokenType, accepted: bool
) -> None:
    """Refuse to re-enroll a token whose destination changed since its enrollment unless
    ``--destination-changed`` says the user was verified by other means: whoever changed
    it may hold only the user's password."""
    from otpgate.auth.oob import still_bound
    from otpgate.errors import OtpgateError
    from otpgate.outofband.codes import destination_of

    if accepted:
        return
    state = ctx.store.decode(user)
    for token in state.tokens:
        secret = state.secrets.get(token.id)
        if token.type is not kind or secret is None:
            continue
        values = ctx.entry_values(user.dn, [token.attribute])[token.attribute]
        try:
            to, masked = destination_of(user.dn, token, values, delivery.sms_country_prefixes)
        except OtpgateError:
            return  # nothing usable there now: the send below says why
        if not still_bound(token, secret, to):
            raise CommandFailed(
                f"{token.attribute} of {user.dn} holds {masked}, not the destination the "
                f"current {CHANNEL_NAMES[kind.value]} token {token.id} was enrolled with: "
                "it changed since, possibly by someone with only the user's password. "
                "Verify the user by other means, then run again with --destination-changed; "
                f"{UNCHANGED}"
            )


def cmd_enroll_sent(args: argparse.Namespace) -> int:
    from otpgate.admin.sentcodes import EnrollmentProof, new_sent_token

    check_options(args)
    kind = TokenType(args.type)
    with admin(args) as ctx:
        delivery = delivery_for(ctx.config.delivery, kind)
        user = ctx.store.resolve(args.user)
        read = ctx.entry_values
        attribute = pick_attribute(
            args.user, kind, args.attribute, delivery, lambda names: read(user.dn, names)
        )
        now = time.time()
        try:
            token, secret = new_sent_token(
                kind, attribute, delivery.codes.digits, args.label or "", now
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        refuse_moved(ctx, delivery, user, kind, args.destination_changed)
        proof, code = EnrollmentProof.start(token, secret, now, delivery.codes.lifetime)
        sent = send_code(ctx, delivery, user, args.user, token, secret, code)
        del code
        if sent.outcome != "sent":
            raise CommandFailed(refusal(sent))
        proof.delivered(sent)  # the token is bound to the destination the code went to
        # Typing the code back may take minutes: no connection is held open meanwhile.
        ctx.store.directory.close()
        note = f"code sent to {sent.destination} by {sent.gateway}"
        out = sys.stderr if args.json else sys.stdout
        print(printable(note), file=out, flush=True)
        prove(
            proof,
            read_line,
            lambda text: print(text, file=sys.stderr, flush=True),
            time.time,
            printable(f"code from the {CHANNEL_NAMES[kind.value]} to {sent.destination}: "),
        )
        (enrolled, gone), user = ctx.store.update(user, enroll_change(proof.token, proof.secret))
    doc = {
        "user": args.user,
        "dn": user.dn,
        "token": enrolled.shown(),
        "replaced": [t.id for t in gone],
        "sent_to": sent.destination,
        "delivered_by": sent.gateway,
    }
    lines = [
        f"enrolled {CHANNEL_NAMES[kind.value]} token {enrolled.id} for {args.user} ({user.dn}): "
        f"its codes go to {attribute} ({sent.destination})"
    ]
    if gone:
        lines.append("replaced: " + ", ".join(f"{t.id} ({t.type.value})" for t in gone))
    emit(args, doc, "\n".join(lines))
    return 0
