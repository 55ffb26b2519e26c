"""The portal's sign-in and self-service pages: sign in and out, my devices, enroll a device
(confirmed by its first code), revoke, print a scratch list.  The second step of a sign-in
whose code is sent is ``codestep``; adding an e-mail/SMS token is ``sentpages``."""

from __future__ import annotations

import base64
from typing import Any

import segno

from otpgate.admin.enrollment import enroll_change, new_oath_token, otpauth_uri
from otpgate.admin.manage import revoke_change, scratch_change
from otpgate.admin.pin import PinRefused, clear_pin_change, set_pin_change, valid_pin
from otpgate.auth.requests import FirstEnrollment, Separate
from otpgate.auth.verify import confirm_new_device
from otpgate.directory.records import OtpState, StateChange, UserEntry
from otpgate.dn import normalise_dn
from otpgate.errors import DirectoryError, PolicyError
from otpgate.otp.scratch import format_for_print, generate_scratch_list
from otpgate.tokens import TokenType
from otpgate.web import render, render_pin, render_tokens
from otpgate.web.base import CODE_NEEDED, CODE_NEEDED_OR_SEND, FAILED, WEB, Reply
from otpgate.web.codestep import SignInCodes
from otpgate.web.sessions import PendingEnrollment, Session

__all__ = ["WEB", "SelfService"]


class SelfService(SignInCodes):
    # -- sign in / out -------------------------------------------------------------------------

    async def get_root(self, request: Any, session: Session | None, client: str) -> Reply:
        return self._redirect("/me" if session else "/signin")

    async def get_signin(self, request: Any, session: Session | None, client: str) -> Reply:
        if session is not None:
            return self._redirect("/me")
        step = self._code_step(request) if request is not None else None
        if step is not None:
            return self.code_step_page(step)
        return self._sign_in_page()

    async def post_signin(
        self,
        form: dict[str, str],
        old: Session | None,
        client: str,
        network: str | None,
        step: Session | None = None,
    ) -> Reply:
        """Password and code; the password alone (a first enrollment); or the password and
        "Send me a code" (``send``: the code step of ``codestep``)."""
        name = form.get("username", "").strip()
        password = form.get("password", "")
        otp = form.get("otp", "").strip().replace(" ", "")
        if old is not None:
            self.sessions.drop(old)  # a new session id at every sign-in (no fixation)
        if step is not None:
            self.code_steps.drop(step)  # a new sign-in ends a code step under way
        now = self.now()
        if not self.by_client.allow(client, now) or not self.by_name.allow(name.lower(), now):
            return self._rate_limited(name, client, "address or typed name")
        if not name or not password or len(name) > 256 or len(password) > 1024:
            return self._sign_in_page(FAILED, name, 401)
        entry = await self._entry_key(name)
        if entry is not None and not self.by_entry.allow(entry, now):
            return self._rate_limited(name, client, "account")
        if form.get("send") and self.can_send:
            return await self.send_first_code(name, password, client, entry)
        session = await self._sign_in(name, password, otp, client, network)
        if session is None:
            message = FAILED if otp else CODE_NEEDED_OR_SEND if self.can_send else CODE_NEEDED
            return self._sign_in_page(message, name, 401)
        return self._redirect("/me", self._cookie(session.id))

    async def _entry_key(self, name: str) -> str | None:
        """The directory entry ``name`` resolves to (its immutable id), for the per-entry limit.

        None when it resolves to nothing (unknown names have only their typed-name bucket) or
        the directory cannot be asked (then the sign-in itself fails)."""
        try:
            user = await self.gateway.store.resolve(name)
        except DirectoryError:
            return None
        return user.entry_id.hex() or normalise_dn(user.dn)

    async def _sign_in(
        self, name: str, password: str, otp: str, client: str, network: str | None
    ) -> Session | None:
        """A session for a sign-in that verified an OTP, or an enroll-only one (first device).

        A typed code is always verified (``require_otp``: trusted networks, exempt accounts and
        groups that need no OTP do not skip it, and the code is never taken for part of the
        password).  Without a code the only way in is a first enrollment: a password alone never
        opens self-service or the help desk for a user who has a token, whatever the policy.
        """
        gw = self.gateway
        if not otp:
            return await self._first_enrollment(name, password, client, network)
        request = Separate(
            name=name,
            client=client,
            channel=WEB,
            password=password,
            code=otp,
            require_otp=True,
        )
        result = await gw.authenticator.login(request, gw.check_password)
        if not result.ok or result.dn is None or result.token_id is None:
            return None
        helpdesk = await self.rights.is_helpdesk(result.dn)
        session = self.sessions.new(
            name, result.dn, self.now(), helpdesk=helpdesk, otp_verified=True
        )
        session.token = result.token_id
        return session

    async def _first_enrollment(
        self, name: str, password: str, client: str, network: str | None
    ) -> Session | None:
        """Password alone: an enroll-only session for a user with no token, where allowed
        (the pipeline decides and audits)."""
        gw = self.gateway
        request = FirstEnrollment(
            name=name, client=client, channel=WEB, password=password, network=network
        )
        result = await gw.authenticator.login(request, gw.check_password)
        if not result.ok or result.dn is None:
            return None
        return self.sessions.new(name, result.dn, self.now(), enroll_only=True)

    async def _helpdesk_now(self, session: Session) -> bool:
        """Help-desk rights for this request: granted at an OTP sign-in and still a member
        (read again, so removing someone from the group takes effect at once)."""
        return (
            session.helpdesk and session.otp_verified and await self.rights.is_helpdesk(session.dn)
        )

    async def post_signout(self, form: dict[str, str], session: Session, client: str) -> Reply:
        self.sessions.drop(session)
        self.audit(session, client, "signout", "signed out")
        return self._redirect("/signin", self._cookie("", max_age=0))

    # -- self-service --------------------------------------------------------------------------

    async def _state(self, name: str) -> tuple[UserEntry, OtpState]:
        user = await self.gateway.store.resolve(name, fresh=True)
        return user, self.gateway.store.decode(user)

    async def get_me(
        self,
        request: Any,
        session: Session | None,
        client: str,
        notice: str | None = None,
        error: str | None = None,
        form: render.FormState = render.NO_FORM,
        status: int = 200,
    ) -> Reply:
        """``form``: a form of this page that comes back with errors by its fields."""
        if session is None:
            return self._redirect("/signin")
        _user, state = await self._state(session.dn)
        enroll_only = session.enroll_only
        csrf = session.csrf
        hardware = (
            render_tokens.claim_form(csrf, form)
            if self.inventory is not None and not enroll_only
            else ""
        )
        body = render.my_devices(
            state,
            csrf,
            enroll_only,
            notice,
            error,
            channels=() if enroll_only else self.enroller.channels,
            destinations=await self.enroller.destinations(session.dn, state),
            now=self.now(),
            hardware=hardware,
            actions=lambda token: render_tokens.device_actions(token, csrf, form),
        )
        if not enroll_only:
            body += render_pin.my_pin(state, csrf)
        return self._page("My devices", body, session, status)

    async def post_enroll(self, form: dict[str, str], session: Session, client: str) -> Reply:
        if session.enroll_only:
            _user, state = await self._state(session.dn)
            if state.tokens:  # enrolled meanwhile (elsewhere): the password alone is over
                return self._end_enroll_only(session, client, "a device was enrolled meanwhile")
        label = form.get("label", "").strip()[:64] or "phone"
        try:
            token, secret = new_oath_token(
                self.config.otp, TokenType.TOTP, label=label, now=self.now()
            )
        except ValueError as exc:  # e.g. control characters in the label
            return await self.get_me(None, session, client, error=f"Label refused: {exc}.")
        session.pending = PendingEnrollment(token, secret)
        account = session.name
        uri = otpauth_uri(token, secret, account, self.config.otp.issuer)
        svg = segno.make(uri, error="m").svg_inline(scale=4, omitsize=True)
        b32 = base64.b32encode(secret.key).decode().rstrip("=")
        self.audit(
            session,
            client,
            "enroll-start",
            f"new {token.type.value} token {token.id}",
            token=token.id,
        )
        return self._page(
            "Enroll an authenticator app", render.enroll(svg, b32, session.csrf), session
        )

    async def post_cancel(self, form: dict[str, str], session: Session, client: str) -> Reply:
        session.pending = None
        return self._redirect("/me")

    async def post_confirm(self, form: dict[str, str], session: Session, client: str) -> Reply:
        pending = session.pending
        if pending is None:
            return await self.get_me(None, session, client, error="Start the enrollment again.")
        code = form.get("code", "").strip().replace(" ", "")
        token, secret = pending.token, pending.secret
        last = confirm_new_device(token, secret, code, self.now(), self.config.otp)
        if last < 0:
            self.audit(session, client, "enroll-reject", "wrong confirmation code", token=token.id)
            return self._page(
                "Enroll an authenticator app",
                render.confirm_form(session.csrf, "That code is not right; type the current one."),
                session,
                400,
            )
        enroll_only = session.enroll_only
        max_tokens = self.config.otp.max_tokens_per_user

        def change(state: OtpState) -> StateChange[Any]:
            if enroll_only and state.tokens:
                raise PolicyError("a device was enrolled meanwhile: sign in with it")
            # The confirmation code's step/counter is recorded as used: it cannot be replayed.
            return enroll_change(
                state, token, secret, max_tokens, replace_software=False, last=last
            )

        try:
            user, _state = await self._state(session.dn)
            await self.gateway.store.update(user, change)
        except PolicyError as exc:
            session.pending = None
            if enroll_only:
                return self._end_enroll_only(session, client, str(exc))
            return await self.get_me(None, session, client, error=str(exc))
        session.pending = None
        self.audit(
            session,
            client,
            "enroll",
            f"activated {token.type.value} token {token.id}",
            token=token.id,
        )
        if enroll_only:
            self.sessions.drop(session)
            body = render.message(
                "Your device is active. Sign in with your password and a code from it.",
                "notice",
            ) + render.sign_in(send=self.can_send)
            return Reply(render.page("Sign in", body), cookie=self._cookie("", max_age=0))
        return await self.get_me(None, session, client, notice=f"Device {token.id} is active.")

    def _end_enroll_only(self, session: Session, client: str, why: str) -> Reply:
        """A password-only session whose user has a token now: signed out, nothing done."""
        self.sessions.drop(session)
        self.audit(session, client, "refused", f"enroll-only session ended: {why}")
        body = render.message("You have a device now: sign in with a code from it.") + (
            render.sign_in(send=self.can_send)
        )
        return Reply(render.page("Sign in", body), 403, cookie=self._cookie("", max_age=0))

    async def post_revoke(self, form: dict[str, str], session: Session, client: str) -> Reply:
        token_id = form.get("token", "")
        try:
            user, _state = await self._state(session.dn)
            removed, _u = await self.gateway.store.update(
                user, lambda s: revoke_change(s, token_id)
            )
        except PolicyError as exc:
            return await self.get_me(None, session, client, error=str(exc))
        self.audit(session, client, "revoke", f"revoked own token {token_id}", token=token_id)
        return await self.get_me(
            None, session, client, notice=f"Revoked {', '.join(t.id for t in removed)}."
        )

    async def post_pin(self, form: dict[str, str], session: Session, client: str) -> Reply:
        """A new PIN for the signed-in user (typed twice; never shown, logged or audited)."""
        try:
            pin = valid_pin(form.get("pin", ""), form.get("pin2", ""))
            now = self.now()
            user, _state = await self._state(session.dn)
            had, _u = await self.gateway.store.update(user, lambda s: set_pin_change(s, pin, now))
        except PinRefused as exc:
            return await self.get_me(None, session, client, error=f"PIN not set: {exc}.")
        self.audit(session, client, "pin-set", "changed own PIN" if had else "set own PIN")
        return await self.get_me(None, session, client, notice="Your PIN is set.")

    async def post_pin_clear(self, form: dict[str, str], session: Session, client: str) -> Reply:
        user, _state = await self._state(session.dn)
        had, _u = await self.gateway.store.update(user, clear_pin_change)
        self.audit(session, client, "pin-clear", "removed own PIN" if had else "no PIN to remove")
        return await self.get_me(None, session, client, notice="You have no PIN now.")

    async def _new_scratch(self, dn: str) -> tuple[list[str], str]:
        codes, scratch = generate_scratch_list()
        now = self.now()
        user, _state = await self._state(dn)
        token, _u = await self.gateway.store.update(user, lambda s: scratch_change(s, scratch, now))
        return format_for_print(codes), token.id

    async def post_scratch(self, form: dict[str, str], session: Session, client: str) -> Reply:
        codes, token_id = await self._new_scratch(session.dn)
        self.audit(session, client, "scratch", "printed a new scratch list", token=token_id)
        return self._page("Scratch codes", render.scratch_codes(codes, session.name), session)
