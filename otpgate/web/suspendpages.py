"""The help desk's suspend, resume and lost-device actions, and the end of a portal session
whose way in was suspended.  The changes are ``otpgate.admin.suspend``'s (the CLI's too),
under the help desk's usual rules: CSRF, protected targets refused on a fresh read, one
audit event per action (``helpdesk-suspend``, ``helpdesk-resume``, ``helpdesk-lost``)."""

from __future__ import annotations

from otpgate.admin.suspend import (
    MAX_SUSPEND_DAYS,
    MAX_TEMPORARY_DAYS,
    BadEndDate,
    end_date,
    lost_change,
    resume_change,
    suspend_change,
)
from otpgate.auth.suspension import inactive, iso, user_suspension
from otpgate.errors import CodecError, DirectoryError, PolicyError
from otpgate.otp.scratch import format_for_print, generate_scratch_list
from otpgate.web import render, render_suspend
from otpgate.web.base import Reply
from otpgate.web.helpdesk import HelpDesk
from otpgate.web.sessions import Session


def _days(form: dict[str, str]) -> int | None:
    text = form.get("days", "").strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 6:
        raise BadEndDate(f"days: {text[:20]!r} is not a number of days")
    return int(text)


def _what(ref: str | None) -> str:
    return f"token {ref}" if ref else "all OTP"


class SuspendPages(HelpDesk):
    async def hd_suspend(self, form: dict[str, str], session: Session, client: str) -> Reply:
        target, ref, now = form.get("user", ""), form.get("token") or None, self.now()
        try:
            until = end_date(form.get("until") or None, _days(form), now, MAX_SUSPEND_DAYS)
        except BadEndDate as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        end = f"until {iso(until)}" if until else "until resumed"
        return await self._hd_change(
            form,
            session,
            client,
            "suspend",
            f"suspend {_what(ref)} {end}",
            lambda s: suspend_change(s, ref, until, now),
        )

    async def hd_resume(self, form: dict[str, str], session: Session, client: str) -> Reply:
        ref, now = form.get("token") or None, self.now()
        return await self._hd_change(
            form,
            session,
            client,
            "resume",
            f"resume {_what(ref)}",
            lambda s: resume_change(s, ref, now),
        )

    async def hd_lost(self, form: dict[str, str], session: Session, client: str) -> Reply:
        """Suspend the lost device and show a temporary list once (as a scratch list is)."""
        target, ref, now = form.get("user", ""), form.get("token") or None, self.now()
        try:
            until = end_date(None, _days(form) or 0, now, MAX_TEMPORARY_DAYS)
        except BadEndDate as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        user = await self._hd_target(form, session, client, "lost")
        if isinstance(user, Reply):
            return user
        codes, scratch = generate_scratch_list()
        try:
            done, _u = await self.gateway.store.update(
                user, lambda s: lost_change(s, ref, scratch, until, now)
            )
        except (PolicyError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        self.audit(
            session,
            client,
            "helpdesk-lost",
            f"lost {done.lost.id}: suspended until resumed; temporary list "
            f"{done.temporary.id} until {iso(until)}"
            + (f"; app passwords revoked: {', '.join(done.apps)}" if done.apps else ""),
            user=target,
            dn=user.dn,
            token=done.lost.id,
        )
        body = render_suspend.temporary_codes(
            format_for_print(codes), target, user.dn, done.lost.id, iso(until)
        )
        return self._page("Temporary codes", body, session)

    async def session_check(self, session: Session, client: str) -> Reply | None:
        """A signed-in session ends when the user's OTP is suspended; when the token it
        signed in with is suspended, expired or gone (revoked, reset); and when any of the
        user's devices was suspended after it opened: otherwise whoever holds a lost device
        and signed in with it before the help desk reacted could enroll a device of their
        own in the session still open.  Read fresh at every request."""
        if not session.otp_verified or session.enroll_only:
            return None
        try:
            _user, state = await self._state(session.dn)
        except (DirectoryError, CodecError) as exc:
            unreadable = render.message(f"The directory cannot be read now ({exc}).")
            return self._page("Unavailable", unreadable, session, 503)
        now = self.now()
        why: str | None = None
        token = state.token(session.token) if session.token else None
        gone = None if token is None else inactive(state.used, token, now)
        since = session.created
        if user_suspension(state.used, now) is not None:
            why = "the user's OTP is suspended"
        elif session.token and token is None:
            # Revoked, or removed by a help-desk reset ("lost phone"): whoever signed in
            # with it must not go on in this session; the user simply signs in again.
            why = f"token {session.token}, which it signed in with, is gone"
        elif token is not None and gone is not None:
            why = f"token {token.id}, which it signed in with, is {gone}"
        elif any(s.since >= int(since) and s.active(now) for s in state.used.suspensions.values()):
            # The help desk reacted to a lost device after this session opened (whatever
            # the device it signed in with is called now): the session may be the thief's.
            why = "a device of the user was suspended after it opened"
        if why is None:
            return None
        self.sessions.drop(session)
        self.audit(session, client, "refused", f"session ended: {why}")
        body = render.message("Your sign-in ended: ask the help desk.") + render.sign_in(
            send=self.can_send
        )
        return Reply(render.page("Sign in", body), 403, cookie=self._cookie("", max_age=0))
