"""The portal's app passwords: the user's own page (create, list, revoke one or all) and the
help desk's revoke one / revoke all of a user's.  The changes are
``otpgate.admin.apppasswords``'s (the CLI's too), each inside the store's compare-and-swap.

Only after a sign-in that verified a code (never a password-only session: an app password
replaces password + code, so it is made only by someone who showed both), and only when
``[app_passwords]`` names a place that takes them (otherwise the page does not exist).
The secret is generated for the create form's answer and rendered into that answer only:
never kept in the session, a field, a URL or the audit trail, so a reload shows nothing
(the browser's resubmission of the form is refused as a second app password of the same
name).  Each create and revoke is a portal action event (``app-password-create``,
``app-password-revoke``, ``helpdesk-app-password-revoke``).
"""

from __future__ import annotations

from typing import Any

from otpgate.admin.apppasswords import create_change, listing, revoke_change, scope_for
from otpgate.errors import CodecError, DirectoryError, NoSuchToken, PolicyError
from otpgate.web import render, render_apps
from otpgate.web.base import Reply
from otpgate.web.helpdesk import HelpDesk
from otpgate.web.render_apps import MAX_NETWORKS_TEXT, scope_text
from otpgate.web.render_forms import NO_FORM, FormState
from otpgate.web.sessions import Session

MAX_NETWORKS = 16
"""Source networks one app password may name."""
MAX_REF = 64


FIELDS = {"name": "app-name", "networks": "app-networks", "expires": "app-expires"}
"""The create form's field of each part a refusal can be about (else the places)."""


def _field_of(refusal: PolicyError) -> str:
    """Which field of the create form ``refusal`` is about."""
    return FIELDS.get(getattr(refusal, "about", ""), "app-where")


def create_fields(form: dict[str, str]) -> tuple[str, list[str], list[str], list[str], str]:
    """(name, listeners, NASes, networks, expiry) as the create form sent them: each place's
    checkbox (``ldap-N``, ``nas-N``) carries the place itself, checked against
    ``[app_passwords]`` by ``scope_for``."""
    listeners = [v for k, v in sorted(form.items()) if k.startswith("ldap-") and v]
    nas = [v for k, v in sorted(form.items()) if k.startswith("nas-") and v]
    text = form.get("networks", "")[: MAX_NETWORKS_TEXT + 1]
    networks = [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]
    return form.get("name", "").strip(), listeners, nas, networks, form.get("expires", "").strip()


class AppPasswordPages(HelpDesk):
    def _apps_refused(self, session: Session | None) -> Reply | None:
        """The answer when this session may not see the page (None: it may)."""
        if session is None:
            return self._redirect("/signin")
        if not self.config.app_passwords.enabled:
            return Reply(render.page("Not found", "<p>No such page.</p>"), 404)
        if not self.manages_apps(session):
            body = render.message("Sign in with a code to manage app passwords.")
            return self._page("Refused", body, session, 403)
        return None

    async def get_app_passwords(
        self,
        request: Any,
        session: Session | None,
        client: str,
        notice: str | None = None,
        error: str | None = None,
        form: FormState = NO_FORM,
        status: int = 200,
    ) -> Reply:
        refused = self._apps_refused(session)
        if refused is not None or session is None:
            return refused or self._redirect("/signin")
        try:
            _user, state = await self._state(session.dn)
        except (DirectoryError, CodecError) as exc:
            unreadable = render.message(f"The directory cannot be read now ({exc}).")
            return self._page("Unavailable", unreadable, session, 503)
        rows = listing(state, self.now())
        body = render_apps.my_apps(rows, self.app_places(), session.csrf, notice, error, form)
        return self._page("App passwords", body, session, status)

    async def post_app_create(self, form: dict[str, str], session: Session, client: str) -> Reply:
        refused = self._apps_refused(session)
        if refused is not None:
            return refused
        name, listeners, nas, networks, expires = create_fields(form)
        kept = {
            "app-name": name[:200],
            "app-networks": form.get("networks", "")[:MAX_NETWORKS_TEXT],
            "app-expires": expires[:20],
            **{k: v for k, v in form.items() if k.startswith(("ldap-", "nas-"))},
        }

        async def again(ident: str, problem: str) -> Reply:
            failed = FormState(kept, {ident: problem})
            return await self.get_app_passwords(None, session, client, form=failed, status=400)

        settings, now = self.config.app_passwords, self.now()
        if len(form.get("networks", "")) > MAX_NETWORKS_TEXT or len(networks) > MAX_NETWORKS:
            return await again("app-networks", f"at most {MAX_NETWORKS} networks")
        try:
            scope = scope_for(settings, listeners, nas, networks, expires or None, now)
            _secret, change = create_change(
                name, scope, now, settings.max_per_user, by=session.token
            )
            user, _state = await self._state(session.dn)
            done, _u = await self.gateway.store.update(user, change)
        except PolicyError as exc:
            return await again(_field_of(exc), str(exc))
        except (DirectoryError, CodecError) as exc:
            return await self.get_app_passwords(None, session, client, error=str(exc), status=503)
        app = done.app
        self.audit(
            session,
            client,
            "app-password-create",
            f"created own app password {app.id} {app.name!r} for {app.scope.text()}",
            token=app.id,
        )
        body = render_apps.created(
            done.secret, app.name, scope_text(app.shown(), self.app_places())
        )
        return self._page("App password created", body, session)

    async def post_app_revoke(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._app_revoke(form.get("token", "")[:MAX_REF], session, client)

    async def post_app_revoke_all(
        self, form: dict[str, str], session: Session, client: str
    ) -> Reply:
        return await self._app_revoke(None, session, client)

    async def _app_revoke(self, ref: str | None, session: Session, client: str) -> Reply:
        refused = self._apps_refused(session)
        if refused is not None:
            return refused
        try:
            user, _state = await self._state(session.dn)
            gone, _u = await self.gateway.store.update(user, lambda s: revoke_change(s, ref))
        except NoSuchToken as exc:
            return await self.get_app_passwords(None, session, client, error=str(exc), status=404)
        except PolicyError as exc:
            return await self.get_app_passwords(None, session, client, error=str(exc), status=400)
        except (DirectoryError, CodecError) as exc:
            return await self.get_app_passwords(None, session, client, error=str(exc), status=503)
        if not gone:
            return await self.get_app_passwords(None, session, client, notice="No app passwords.")
        what = ", ".join(f"{a.id} {a.name!r}" for a in gone)
        self.audit(
            session,
            client,
            "app-password-revoke",
            f"revoked own app password{'s' if len(gone) > 1 else ''} {what}",
            token=gone[0].id if ref is not None else None,
        )
        names = ", ".join(a.name for a in gone)
        return await self.get_app_passwords(None, session, client, notice=f"Revoked {names}.")

    # -- help desk -------------------------------------------------------------------------------

    async def hd_app_revoke(self, form: dict[str, str], session: Session, client: str) -> Reply:
        ref = form.get("token", "")[:MAX_REF]
        return await self._hd_change(
            form,
            session,
            client,
            "app-password-revoke",
            f"revoke app password {ref}",
            lambda s: revoke_change(s, ref),
        )

    async def hd_app_revoke_all(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._hd_change(
            form,
            session,
            client,
            "app-password-revoke",
            "revoke all app passwords",
            lambda s: revoke_change(s, None),
        )
