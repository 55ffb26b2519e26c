"""The portal's self-service for hardware tokens and device names: add an inventory token by
its serial with proof of possession (``admin/claim.py``), resynchronise an HOTP token with
three consecutive codes, rename a device.

Every page here needs a session that verified a one-time code (``Portal`` refuses them to
password-only sessions).  Wrong codes count towards the user's lockout like a wrong login
code; an unknown serial, a serial taken meanwhile and wrong codes get one answer, after
the same work and no sooner than ``ANSWER_SECONDS`` after the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, task, threads

from otpgate.admin.claim import (
    ClaimKind,
    Proof,
    Unavailable,
    claim_token,
    claimable,
    code_problem,
    failure_change,
    proofs_capped,
    prove,
)
from otpgate.admin.manage import advance_change, rename_change
from otpgate.auth.lockout import is_locked
from otpgate.directory.inventory import SERIAL, InventoryItem
from otpgate.directory.records import OtpState, UserEntry
from otpgate.errors import (
    CodecError,
    DirectoryError,
    InventoryError,
    NoSuchToken,
    PolicyError,
)
from otpgate.otp.oath import resync_hotp
from otpgate.tokens import TokenType
from otpgate.web import render_tokens
from otpgate.web.base import Reply
from otpgate.web.render import FormState, when
from otpgate.web.selfservice import SelfService
from otpgate.web.sessions import Session

T = TypeVar("T")

ANSWER_SECONDS = 1.0
"""A claim is answered no sooner than this after it came in, whatever the outcome: the
answer's timing does not tell an unknown serial from one whose codes were wrong."""
UNAVAILABLE_TEXT = (
    "No token you can add has this serial and these codes. Check the serial and the kind "
    "of token, and type new codes (each failed try counts towards locking your sign-in)."
)
BUSY_TEXT = "The portal is busy checking other tokens; try again in a moment."
MAX_WAITING = 4
"""Proofs waiting for the one running before the portal answers "busy"."""


class Busy(Exception):
    """Too many proofs queued in this process."""


class ProofRunner:
    """Runs CPU-heavy proofs (an HOTP search over 100,000 counters: about 0.1 s of CPU) off
    the reactor thread, in its thread pool, one at a time; at most ``MAX_WAITING`` wait.
    The LDAP proxy and RADIUS go on meanwhile (the thread holds the interpreter lock at
    most a switch interval at a time).  Without a thread pool (tests on a fake clock) the
    proof runs inline."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.lock = defer.DeferredLock()

    async def run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.lock.locked and len(self.lock.waiting) >= MAX_WAITING:
            raise Busy()
        await self.lock.acquire()
        try:
            pool = getattr(self.reactor, "getThreadPool", None)
            if pool is None:
                return work(*args, **kwargs)
            result: T = await threads.deferToThreadPool(self.reactor, pool(), work, *args, **kwargs)
            return result
        finally:
            self.lock.release()


class TokenPages(SelfService):
    _proofs: ProofRunner | None = None

    @property
    def proofs(self) -> ProofRunner:
        if self._proofs is None:
            self._proofs = ProofRunner(self.gateway.reactor)
        return self._proofs

    async def _not_before(self, started: float) -> None:
        """Wait until ``ANSWER_SECONDS`` after ``started`` (on the portal's clock)."""
        left = started + ANSWER_SECONDS - self.now()
        if left > 0:
            await task.deferLater(self.clock, left, lambda: None)

    async def _count_failure(self, user: UserEntry, now: float) -> bool:
        """A failed proof, written through the state engine; whether the user is locked now."""
        locked, _u = await self.gateway.store.update(user, failure_change(now, self.config.lockout))
        return bool(locked)

    def _locked_text(self, state: OtpState) -> str:
        if state.used.locked_until <= self.now():  # the daily cap of failed proofs
            return (
                "Too many failed tries today: adding and resynchronising tokens is closed "
                "for a day. Ask the help desk if you need it sooner."
            )
        return (
            "Too many failed codes: adding and resynchronising tokens is locked until "
            f"{when(state.used.locked_until)}."
        )

    # -- add a hardware token from the inventory --------------------------------------------

    async def post_claim(self, form: dict[str, str], session: Session, client: str) -> Reply:
        started = self.now()
        inventory = self.inventory
        if inventory is None:
            return await self.get_me(
                None,
                session,
                client,
                error="Hardware tokens are not handed out here: ask the help desk.",
                status=404,
            )
        serial = form.get("serial", "").strip()
        kind_text = form.get("kind", "")
        typed = [form.get(f"code{i}", "").strip().replace(" ", "") for i in (1, 2, 3)]
        errors: dict[str, str] = {}
        if not SERIAL.fullmatch(serial):
            errors["claim-serial"] = (
                "Type the serial printed on the token: letters, digits and . _ : - only."
            )
        kind = next((k for k in ClaimKind if k.value == kind_text), None)
        if kind is None:
            errors["claim-kind"] = "Choose the kind of token."
            codes: list[str] = []
        else:
            codes = typed[: kind.codes]
            for number, code in enumerate(codes, start=1):
                problem = code_problem(kind, code)
                if not code:
                    errors[f"claim-code{number}"] = (
                        "Type this code." if number == 1 else "HOTP tokens need three codes."
                    )
                elif problem is not None:
                    errors[f"claim-code{number}"] = f"Not a code: {problem}."
        values = {"claim-serial": serial, "claim-kind": kind_text}
        if errors or kind is None:
            return await self.get_me(
                None, session, client, form=FormState(values, errors), status=400
            )
        now = self.now()
        user, state = await self._state(session.dn)
        if is_locked(state.used, now) or proofs_capped(state.used, now):
            self.audit(session, client, "claim-reject", f"serial {serial}: locked out")
            return await self.get_me(
                None, session, client, error=self._locked_text(state), status=403
            )
        try:
            item = await claimable(inventory, serial)
        except (InventoryError, CodecError) as exc:
            # An inventory value the gateway cannot read: audited; to the user, the same answer.
            self.audit(session, client, "claim-reject", f"serial {serial}: unreadable ({exc})")
            item = None
        try:
            proof = await self.proofs.run(prove, item, kind, codes, now)
        except Busy:
            return await self.get_me(None, session, client, error=BUSY_TEXT, status=503)
        token = None
        why = "not in the inventory" if item is None else "codes do not prove it"
        if proof is not None and item is not None:
            try:
                token = await self._claim(inventory, item, session, proof, now)
            except Unavailable:
                why = "taken meanwhile"
            except PolicyError as exc:  # the token is hers, but cannot be added now
                self.audit(session, client, "claim-reject", f"serial {serial}: {exc}")
                await self._not_before(started)
                return await self.get_me(
                    None,
                    session,
                    client,
                    error=f"Not added: {exc}.",
                    form=FormState(values),
                    status=409,
                )
        if token is None:
            locked = await self._count_failure(user, now)
            self.audit(
                session,
                client,
                "claim-reject",
                f"serial {serial} ({kind.value}): {why}" + (" (now locked out)" if locked else ""),
            )
            await self._not_before(started)
            failed = FormState(values, {"claim-serial": UNAVAILABLE_TEXT})
            return await self.get_me(None, session, client, form=failed, status=400)
        self.audit(
            session,
            client,
            "claim",
            f"added inventory token serial {serial} ({kind.value}) with proof of possession",
            token=token.id,
        )
        await self._not_before(started)
        name = token.label if token.label and token.label != serial else ""
        added = f"{name} (serial {serial})" if name else f"the token with serial {serial}"
        return await self.get_me(
            None,
            session,
            client,
            notice=f"Added {added}. Sign in with the codes that follow the ones you typed.",
        )

    async def _claim(
        self, inventory: Any, item: InventoryItem, session: Session, proof: Proof, now: float
    ) -> Any:
        return await claim_token(
            inventory, item, session.dn, proof, self.config.otp.max_tokens_per_user, now
        )

    # -- resynchronise an HOTP token -------------------------------------------------------------

    async def post_resync(self, form: dict[str, str], session: Session, client: str) -> Reply:
        token_id = form.get("token", "")
        user, state = await self._state(session.dn)
        token = next((t for t in state.tokens if t.id == token_id), None)
        secret = state.secrets.get(token_id)
        if token is None or token.type is not TokenType.HOTP or secret is None:
            return await self.get_me(
                None, session, client, status=404, error="You have no HOTP token of that id."
            )
        ids = render_tokens.resync_ids(token)
        codes = tuple(form.get(f"code{n}", "").strip().replace(" ", "") for n in (1, 2, 3))
        errors = {
            i: f"Type the {token.digits} digits of a code."
            for i, c in zip(ids, codes, strict=True)
            if not (c.isascii() and c.isdigit() and len(c) == token.digits)
        }
        if errors:
            return await self.get_me(None, session, client, form=FormState({}, errors), status=400)
        now = self.now()
        if is_locked(state.used, now) or proofs_capped(state.used, now):
            self.audit(session, client, "resync-reject", "locked out", token=token_id)
            return await self.get_me(
                None, session, client, error=self._locked_text(state), status=403
            )
        last = state.used.use_of(token_id).last
        try:
            counter = await self.proofs.run(
                resync_hotp,
                secret.key,
                codes,
                last,
                digits=token.digits,
                algorithm=token.algorithm,
            )
        except Busy:
            return await self.get_me(None, session, client, error=BUSY_TEXT, status=503)
        if counter is None:
            locked = await self._count_failure(user, now)
            self.audit(
                session,
                client,
                "resync-reject",
                "not three consecutive codes" + (" (now locked out)" if locked else ""),
                token=token_id,
            )
            message = (
                "These are not three codes in a row of this token (searched 100,000 presses "
                "ahead). Press the button three more times and type the new codes."
            )
            return await self.get_me(
                None, session, client, status=400, form=FormState({}, {ids[0]: message})
            )
        key = secret.key
        try:
            (_token, moved), _u = await self.gateway.store.update(
                user, lambda s: advance_change(s, token_id, key, counter, now)
            )
        except PolicyError as exc:
            return await self.get_me(None, session, client, error=str(exc), status=409)
        self.audit(
            session,
            client,
            "resync",
            f"resynchronised own token {token_id}" + ("" if moved else " (already in step)"),
            token=token_id,
        )
        return await self.get_me(
            None,
            session,
            client,
            notice=f"Token {token.label or token_id} is in step again: sign in with its next code.",
        )

    # -- rename a device -----------------------------------------------------------------------

    async def post_rename(self, form: dict[str, str], session: Session, client: str) -> Reply:
        token_id = form.get("token", "")
        label = form.get("label", "")
        field_id = f"label-{token_id}"
        try:
            user, _state = await self._state(session.dn)
            renamed, _u = await self.gateway.store.update(
                user, lambda s: rename_change(s, token_id, label)
            )
        except NoSuchToken as exc:
            return await self.get_me(None, session, client, error=str(exc), status=404)
        except PolicyError as exc:
            failed = FormState({field_id: label}, {field_id: str(exc)})
            return await self.get_me(None, session, client, form=failed, status=400)
        except (DirectoryError, CodecError) as exc:
            return await self.get_me(None, session, client, error=str(exc), status=503)
        self.audit(
            session,
            client,
            "rename",
            f"renamed own token {token_id} to {renamed.label!r}",
            token=token_id,
        )
        return await self.get_me(None, session, client, notice=f"Renamed to {renamed.label}.")
