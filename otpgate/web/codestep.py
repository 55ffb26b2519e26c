"""The sign-in's second step when the code is sent by e-mail or SMS.

"Send me a code" on the sign-in form asks the pipeline to send one (``SendCode`` with the
password: the pipeline checks it upstream before anything is sent; the user's first
e-mail/SMS token is used, since nobody is known before the password is checked and a
button for a channel the user lacks could only answer the generic failure).  A result with
a ``challenge`` opens a code step: a session of its own store (``PortalBase.code_steps``),
bound to the entry and the time, never the password, that opens nothing but this step.
Its code form signs in with ``CodeOnly(require_otp=True)`` and is single use (any code
submitted ends the step); the step ends with the code's lifetime.  "Send again" sends a new
code without the password (``SendCode(password=None)``: the pipeline's cooldown and hourly
limit apply).  CSRF and the sign-in rate limits apply to every POST of the step.

What the pages say: a wrong password, an unknown user, a user without an e-mail/SMS token,
a locked-out user get the generic sign-in failure, as with password+code.  Only a send the
pipeline refused *after* the password was right (``AuthResult.sent`` is set) is explained
in plain words (cooldown, hourly limit, no gateway took it, no usable destination): a code
sent would have said as much.
"""

from __future__ import annotations

import re

from otpgate.auth.requests import CodeOnly, SendCode, Sent
from otpgate.dn import same_dn
from otpgate.web import render, render_codes
from otpgate.web.base import FAILED, WEB, PortalBase, Reply
from otpgate.web.sessions import CodeStep, Session, csrf_ok

CODE_STEP_POSTS = (b"/signin/code", b"/signin/resend", b"/signin/cancel")
EXPIRED = "The code step is over (the code expired, or the page is old): sign in again."
_SECONDS_LEFT = re.compile(r"\((\d+) s left\)")


def refusal(sent: Sent | None, reason: str = "") -> tuple[str, int]:
    """Plain words and an HTTP status for a send that did not happen: by the outcome the
    pipeline reported (``sent``), else by its reason (only for "send again", whose password
    was checked by the first step)."""
    if sent is not None and sent.outcome == "limited":
        detail = sent.detail
        if "cooldown" in detail:
            left = _SECONDS_LEFT.search(detail)
            wait = f"{left.group(1)} seconds" if left else "a minute"
            return f"A code was sent moments ago: wait {wait} before asking again.", 429
        if "hourly" in detail:
            return (
                "Too many codes were sent to you in the last hour: try again later, or use "
                "another device.", 429,
            )  # fmt: skip
        if "budget" in detail:
            return "Too many codes are being sent right now: try again in a minute.", 429
        if "locked" in detail:
            return "Too many failed attempts: no code is sent for now.", 403
        return "No code was sent: try again later.", 429
    if sent is not None and sent.outcome == "failed":
        return (
            "The code could not be sent (no gateway took it): try again later, or ask your "
            "help desk.", 503,
        )  # fmt: skip
    if sent is not None and sent.outcome == "refused":
        where = "phone number" if sent.channel == "sms" else "e-mail address"
        return f"No code can be sent: the directory holds no usable {where} for you.", 409
    if "locked out" in reason:
        return "Too many failed attempts: no code is sent for now.", 403
    if "unavailable" in reason:
        return "The directory cannot be reached: try again later.", 503
    return "No code was sent.", 400


class SignInCodes(PortalBase):
    """The code step's pages (``SelfService`` builds on them)."""

    def _lifetime(self) -> int:
        return int(self.gateway.authenticator.settings.otp.sent_code_lifetime)

    async def send_first_code(
        self, name: str, password: str, client: str, entry: str | None
    ) -> Reply:
        """"Send me a code": the pipeline checks the password, then sends."""
        gw = self.gateway
        request = SendCode(name=name, client=client, channel=WEB, password=password)
        result = await gw.authenticator.login(request, gw.check_password)
        if not result.challenge or result.dn is None or result.sent is None:
            if result.sent is None:
                return self._sign_in_page(FAILED, name, 401)
            text, status = refusal(result.sent)
            return self._sign_in_page(text, name, status)
        now = self.now()
        step = self.code_steps.new(name, result.dn, now)
        step.code_step = CodeStep(
            result.dn, entry, result.sent.channel, result.challenge, now + self._lifetime()
        )
        # The code form is a GET of /signin: reloading it sends nothing.
        return self._redirect("/signin", self._cookie(step.id))

    def code_step_page(
        self, step: Session, notice: str | None = None, error: str | None = None,
        status: int = 200,
    ) -> Reply:  # fmt: skip
        code = step.code_step
        if code is None or not code.live(self.now()):
            return self._end_step(step, EXPIRED)
        body = render_codes.code_step(code.challenge, step.csrf, notice, error)
        return Reply(render.page("Type the code", body), status)

    def _end_step(self, step: Session, message: str, status: int = 401) -> Reply:
        self.code_steps.drop(step)
        page = self._sign_in_page(message, step.name, status)
        return Reply(page.body, status, cookie=self._cookie("", max_age=0))

    async def post_code_step(
        self, path: bytes, form: dict[str, str], step: Session | None, client: str
    ) -> Reply:
        """/signin/code, /signin/resend, /signin/cancel of the step the cookie names."""
        if step is None or step.code_step is None:
            page = self._sign_in_page(EXPIRED, status=401)
            return Reply(page.body, 401, cookie=self._cookie("", max_age=0))
        if not csrf_ok(step, form.get("csrf")):
            self.audit(step, client, "refused", f"bad CSRF token on {path.decode()}")
            body = render.message("The form expired; try again.")
            return Reply(render.page("Refused", body), 403)
        if path == b"/signin/cancel":
            self.code_steps.drop(step)
            return self._redirect("/signin", self._cookie("", max_age=0))
        code = step.code_step
        now = self.now()
        if not code.live(now):
            return self._end_step(step, EXPIRED)
        buckets = (
            ("address", self.by_client, client),
            ("typed name", self.by_name, step.name.lower()),
            ("account", self.by_entry, code.entry),
        )
        for bucket, limiter, key in buckets:
            if key is not None and not limiter.allow(key, now):
                self.audit(step, client, "reject", f"web sign-in rate limit ({bucket})")
                return self.code_step_page(step, error="Too many attempts; wait a minute.",
                                           status=429)  # fmt: skip
        if path == b"/signin/resend":
            return await self._send_again(step, code, client)
        return await self._verify(step, code, form.get("code", ""), client)

    async def _send_again(self, step: Session, code: CodeStep, client: str) -> Reply:
        request = SendCode(name=code.dn, client=client, channel=WEB, kind=code.kind)
        result = await self.gateway.authenticator.login(request)
        if result.challenge:
            code.challenge = result.challenge
            code.expires = self.now() + self._lifetime()
            return self.code_step_page(step, notice="A new code was sent.")
        text, status = refusal(result.sent, result.reason)
        return self.code_step_page(step, error=text, status=status)

    async def _verify(self, step: Session, code: CodeStep, typed: str, client: str) -> Reply:
        """The code: single use, whatever its outcome (a wrong one means signing in again,
        so guesses cost a password each, as with password+code)."""
        self.code_steps.drop(step)
        gw = self.gateway
        given = typed.strip().replace(" ", "")
        request = CodeOnly(name=code.dn, client=client, channel=WEB, code=given, require_otp=True)
        result = await gw.authenticator.login(request)
        if (
            not result.ok
            or result.dn is None
            or result.token_id is None
            or not same_dn(result.dn, code.dn)
        ):
            return self._end_step(step, FAILED)
        helpdesk = await self.rights.is_helpdesk(result.dn)
        session = self.sessions.new(
            step.name, result.dn, self.now(), helpdesk=helpdesk, otp_verified=True
        )
        session.token = result.token_id
        return self._redirect("/me", self._cookie(session.id))

    def _rate_limited(self, name: str, client: str, bucket: str) -> Reply:
        self.audit(None, client, "reject", f"web sign-in rate limit ({bucket})", user=name)
        return self._sign_in_page("Too many attempts; wait a minute.", name, 429)
