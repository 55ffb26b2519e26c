"""The portal's pages that add an e-mail/SMS token: the user's own (self-service, an
OTP-verified session) and a user's at the help desk (the user reads the code back to the
agent).  Both run the one flow of ``sentenroll``; the help desk's under its usual rules
(protected targets refused on a fresh read at each step, CSRF, audit)."""

from __future__ import annotations

from otpgate.auth.requests import Sent
from otpgate.dn import same_dn
from otpgate.errors import CodecError, DirectoryError, PolicyError
from otpgate.tokens import Token
from otpgate.web import render_codes
from otpgate.web.base import Reply
from otpgate.web.helpdesk import HelpDesk
from otpgate.web.render import CHANNEL_LABELS
from otpgate.web.sentenroll import DestinationMoved, SentRefused
from otpgate.web.sessions import PendingSent, Session

TITLE = "Add a code by e-mail or SMS"
NOTHING_WAITING = "No code is waiting to be typed back: start again."


def _kind(form: dict[str, str]) -> str:
    """The channel the form asks for; anything else is named "unknown" (audit text)."""
    kind = form.get("kind", "")
    return kind if kind in CHANNEL_LABELS else "unknown"


def _started(kind: str, token_id: str, sent: Sent) -> str:
    return f"new {kind} token {token_id}: code sent to {sent.destination} by {sent.gateway}"


def _active(token: Token, pending: PendingSent) -> str:
    return f"activated {token.type.value} token {token.id} ({pending.destination})"


class SentTokenPages(HelpDesk):
    # -- self-service ----------------------------------------------------------------------------

    async def post_enroll_sent(self, form: dict[str, str], session: Session, client: str) -> Reply:
        kind = _kind(form)
        try:
            pending, sent = await self.enroller.start(session.dn, session.name, kind, self.now())
        except SentRefused as exc:
            self.audit(session, client, "refused", f"{kind} token enrollment: {exc}", send=exc.sent)
            return await self.get_me(None, session, client, error=str(exc))
        session.pending_sent = pending
        token_id = pending.proof.token.id
        self.audit(
            session, client, "enroll-sent-start", _started(kind, token_id, sent),
            token=token_id, send=sent,
        )  # fmt: skip
        body = render_codes.sent_proof(pending.destination, session.csrf, "/enroll-sent")
        return self._page(TITLE, body, session)

    async def post_enroll_sent_confirm(
        self, form: dict[str, str], session: Session, client: str
    ) -> Reply:
        pending = session.pending_sent
        if pending is None or pending.helpdesk or not same_dn(pending.dn, session.dn):
            return await self.get_me(None, session, client, error=NOTHING_WAITING)
        token_id = pending.proof.token.id
        try:
            token = await self.enroller.finish(pending, form.get("code", ""), self.now())
        except SentRefused as exc:
            self.audit(session, client, "enroll-reject", "wrong confirmation code", token=token_id)
            if exc.over:
                session.pending_sent = None
                return await self.get_me(None, session, client, error=str(exc))
            body = render_codes.sent_proof(
                pending.destination, session.csrf, "/enroll-sent", error=str(exc)
            )
            return self._page(TITLE, body, session, 400)
        except (PolicyError, DirectoryError, CodecError) as exc:
            session.pending_sent = None
            return await self.get_me(None, session, client, error=str(exc))
        session.pending_sent = None
        self.audit(session, client, "enroll-sent", _active(token, pending), token=token.id)
        label = CHANNEL_LABELS.get(token.type.value, token.type.value)
        notice = f"Codes by {label} to {pending.destination} are active ({token.id})."
        return await self.get_me(None, session, client, notice=notice)

    async def post_enroll_sent_cancel(
        self, form: dict[str, str], session: Session, client: str
    ) -> Reply:
        if session.pending_sent is not None and not session.pending_sent.helpdesk:
            session.pending_sent = None
        return self._redirect("/me")

    # -- help desk -------------------------------------------------------------------------------

    async def hd_enroll_sent(self, form: dict[str, str], session: Session, client: str) -> Reply:
        target = form.get("user", "")
        kind = _kind(form)
        user = await self._hd_target(form, session, client, "enroll-sent")
        if isinstance(user, Reply):
            return user
        try:
            verified = form.get("verified") == "yes"
            pending, sent = await self.enroller.start(
                user.dn, target, kind, self.now(), True, verified
            )
        except DestinationMoved as exc:
            self.audit(
                session, client, "refused",
                f"{kind} token enrollment: the destination changed since enrollment; "
                "verification of the caller asked",
                user=target, dn=user.dn,
            )  # fmt: skip
            body = render_codes.moved_confirm(str(exc), kind, target, session.csrf)
            return self._page(f"Help desk: {TITLE.lower()}", body, session)
        except SentRefused as exc:
            self.audit(
                session, client, "refused", f"{kind} token enrollment: {exc}",
                user=target, dn=user.dn, send=exc.sent,
            )  # fmt: skip
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        session.pending_sent = pending
        token_id = pending.proof.token.id
        self.audit(
            session, client, "helpdesk-enroll-sent-start", _started(kind, token_id, sent),
            user=target, dn=user.dn, token=token_id, send=sent,
        )  # fmt: skip
        body = render_codes.sent_proof(
            pending.destination, session.csrf, "/helpdesk/enroll-sent", helpdesk_user=target
        )
        return self._page(f"Help desk: {TITLE.lower()}", body, session)

    async def hd_enroll_sent_confirm(
        self, form: dict[str, str], session: Session, client: str
    ) -> Reply:
        pending = session.pending_sent
        if pending is None or not pending.helpdesk:
            return await self.get_helpdesk(None, session, client, "", error=NOTHING_WAITING)
        # The target's protection is decided again, on a fresh read, before anything is written.
        user = await self._hd_target({"user": pending.dn}, session, client, "enroll-sent")
        if isinstance(user, Reply):
            session.pending_sent = None
            return user
        token_id = pending.proof.token.id
        try:
            token = await self.enroller.finish(pending, form.get("code", ""), self.now())
        except SentRefused as exc:
            self.audit(
                session, client, "enroll-reject", "wrong confirmation code",
                user=pending.user, dn=user.dn, token=token_id,
            )  # fmt: skip
            if exc.over:
                session.pending_sent = None
                return await self.get_helpdesk(None, session, client, pending.user, error=str(exc))
            body = render_codes.sent_proof(
                pending.destination, session.csrf, "/helpdesk/enroll-sent", pending.user,
                error=str(exc),
            )  # fmt: skip
            return self._page(f"Help desk: {TITLE.lower()}", body, session, 400)
        except (PolicyError, DirectoryError, CodecError) as exc:
            session.pending_sent = None
            return await self.get_helpdesk(None, session, client, pending.user, error=str(exc))
        session.pending_sent = None
        self.audit(
            session, client, "helpdesk-enroll-sent", _active(token, pending),
            user=pending.user, dn=user.dn, token=token.id,
        )  # fmt: skip
        label = CHANNEL_LABELS.get(token.type.value, token.type.value)
        notice = f"Done: codes by {label} to {pending.destination} are active ({token.id})."
        return await self.get_helpdesk(None, session, client, pending.user, notice=notice)

    async def hd_enroll_sent_cancel(
        self, form: dict[str, str], session: Session, client: str
    ) -> Reply:
        pending = session.pending_sent
        target = ""
        if pending is not None and pending.helpdesk:
            target = pending.user
            session.pending_sent = None
        return await self.get_helpdesk(None, session, client, target)
