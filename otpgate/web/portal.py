"""The portal over Twisted Web: the pages (``selfservice``, ``helpdesk``) and the routing.

Decisions (who may sign in how, help-desk rights) are the pipeline's (``otpgate/auth``);
sessions, CSRF and rate limits are in ``sessions``; HTML in ``render``; plumbing in ``base``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.web import server

from otpgate.auth.policy import in_networks
from otpgate.web import health, render
from otpgate.web.apppages import AppPasswordPages
from otpgate.web.base import Reply
from otpgate.web.censuspage import CensusPages
from otpgate.web.codestep import CODE_STEP_POSTS
from otpgate.web.importpages import IMPORT_UPLOAD, TEMPLATE_PATHS, ImportPages
from otpgate.web.metrics import CONTENT_TYPE
from otpgate.web.sentpages import SentTokenPages
from otpgate.web.sessions import Session, csrf_ok
from otpgate.web.suspendpages import SuspendPages
from otpgate.web.tokenpages import TokenPages

ENROLL_ONLY_POSTS = (b"/signout", b"/enroll", b"/enroll/confirm", b"/enroll/cancel")
"""What a password-only (first enrollment) session may do."""


class Portal(AppPasswordPages, SentTokenPages, SuspendPages, TokenPages, ImportPages, CensusPages):
    def render(self, request: Any) -> Any:
        d = defer.ensureDeferred(self._handle(request))
        d.addErrback(self._crashed, request)
        d.addCallback(self._send, request)
        return server.NOT_DONE_YET

    # -- routing -------------------------------------------------------------------------------

    async def _handle(self, request: Any) -> Reply:
        path: bytes = request.path
        method: bytes = request.method
        address = self._client(request)
        client = address.address
        if path in self._static and method == b"GET":
            body, ctype = self._static[path]
            return Reply(body, content_type=ctype)
        if path == b"/healthz" and method in (b"GET", b"HEAD"):
            verdict = await self.health.check()
            if verdict == health.OK:
                return Reply(b"ok\n", 200, b"text/plain")
            return Reply(f"unavailable: {verdict}\n".encode(), 503, b"text/plain")
        if path == b"/metrics" and method == b"GET":
            if not in_networks(address.network, self.web.metrics_networks):
                return Reply(b"forbidden\n", 403, b"text/plain")
            self.metrics.sessions.set(len(self.sessions))
            return Reply(self.metrics.text(), content_type=CONTENT_TYPE.encode())
        session = self._session(request)
        if session is not None:
            ended = await self.session_check(session, client)
            if ended is not None:
                return ended
        if (
            session is not None
            and (path == b"/helpdesk" or path.startswith(b"/helpdesk/"))
            and not await self._helpdesk_now(session)
        ):
            self.audit(session, client, "refused", "help-desk page without help-desk rights")
            return self._page("Refused", render.message("Help desk only."), session, 403)
        if method == b"GET":
            gets: dict[bytes, Callable[[Any, Session | None, str], Awaitable[Reply]]] = {
                b"/": self.get_root,
                b"/signin": self.get_signin,
                b"/me": self.get_me,
                b"/app-passwords": self.get_app_passwords,
                b"/helpdesk": self.get_helpdesk,
                b"/helpdesk/inventory": self.get_inventory,
                b"/helpdesk/inventory/token": self.get_inventory_token,
                b"/helpdesk/census": self.get_census,
                **{template: self.get_template for template in TEMPLATE_PATHS},
            }
            handler = gets.get(path)
            if handler is None:
                return Reply(render.page("Not found", "<p>No such page.</p>"), 404)
            return await handler(request, session, client)
        if method != b"POST":
            return Reply(b"method not allowed\n", 405, b"text/plain")
        form, files = self._post_form(request)  # the import upload: multipart, with a file
        if form is None:
            return Reply(b"bad request\n", 400, b"text/plain")
        if path == b"/signin":
            step = self._code_step(request)
            return await self.post_signin(form, session, client, address.network, step)
        if path in CODE_STEP_POSTS:
            return await self.post_code_step(path, form, self._code_step(request), client)
        if session is None:
            return self._redirect("/signin")
        if not csrf_ok(session, form.get("csrf")):
            self.audit(
                session, client, "refused", f"bad CSRF token on {path.decode(errors='replace')}"
            )
            return self._page(
                "Refused", render.message("The form expired; try again."), session, 403
            )
        posts: dict[bytes, Callable[[dict[str, str], Session, str], Awaitable[Reply]]] = {
            b"/signout": self.post_signout,
            b"/enroll": self.post_enroll,
            b"/enroll/confirm": self.post_confirm,
            b"/enroll/cancel": self.post_cancel,
            b"/revoke": self.post_revoke,
            b"/scratch": self.post_scratch,
            b"/pin": self.post_pin,
            b"/pin/clear": self.post_pin_clear,
            b"/enroll-sent": self.post_enroll_sent,
            b"/enroll-sent/confirm": self.post_enroll_sent_confirm,
            b"/enroll-sent/cancel": self.post_enroll_sent_cancel,
            b"/claim": self.post_claim,
            b"/resync": self.post_resync,
            b"/rename": self.post_rename,
            b"/app-passwords/create": self.post_app_create,
            b"/app-passwords/revoke": self.post_app_revoke,
            b"/app-passwords/revoke-all": self.post_app_revoke_all,
            b"/helpdesk/revoke": self.hd_revoke,
            b"/helpdesk/reset": self.hd_reset,
            b"/helpdesk/unlock": self.hd_unlock,
            b"/helpdesk/scratch": self.hd_scratch,
            b"/helpdesk/pin": self.hd_pin,
            b"/helpdesk/pin-clear": self.hd_pin_clear,
            b"/helpdesk/scratch-mail": self.hd_scratch_mail,
            b"/helpdesk/assign": self.hd_assign,
            b"/helpdesk/suspend": self.hd_suspend,
            b"/helpdesk/resume": self.hd_resume,
            b"/helpdesk/lost": self.hd_lost,
            b"/helpdesk/enroll-sent": self.hd_enroll_sent,
            b"/helpdesk/enroll-sent/confirm": self.hd_enroll_sent_confirm,
            b"/helpdesk/enroll-sent/cancel": self.hd_enroll_sent_cancel,
            b"/helpdesk/app-passwords/revoke": self.hd_app_revoke,
            b"/helpdesk/app-passwords/revoke-all": self.hd_app_revoke_all,
            b"/helpdesk/inventory/add": self.inv_add,
            b"/helpdesk/inventory/rename": self.inv_rename,
            b"/helpdesk/inventory/delete": self.inv_delete,
            b"/helpdesk/inventory/assign": self.inv_assign,
            b"/helpdesk/inventory/unassign": self.inv_unassign,
            IMPORT_UPLOAD: lambda f, s, c: self.inv_upload(f, files, s, c),
            b"/helpdesk/inventory/import/confirm": self.inv_import,
            b"/helpdesk/inventory/import/cancel": self.inv_import_cancel,
            b"/helpdesk/inventory/import/error": self.inv_error_file,
        }
        post = posts.get(path)
        if post is None:
            return Reply(render.page("Not found", "<p>No such page.</p>"), 404)
        if not session.otp_verified and not session.enroll_only:
            # Cannot happen (every other session verified an OTP): refuse rather than trust it.
            self.audit(session, client, "refused", "session without a verified OTP")
            return self._page("Refused", render.message("Sign in with a code."), session, 403)
        if session.enroll_only and path not in ENROLL_ONLY_POSTS:
            self.audit(
                session,
                client,
                "refused",
                f"{path.decode(errors='replace')} in a password-only (enroll-only) session",
            )
            return self._page("Refused", render.message("Enroll a device first."), session, 403)
        return await post(form, session, client)
