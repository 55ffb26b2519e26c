"""The portal's help desk: find a user, see their devices, revoke, reset, unlock, issue a
scratch list (shown, or sent to the user's own address), assign an inventory token (adding
an e-mail/SMS token is ``sentpages``; suspend, resume and lost devices ``suspendpages``);
never for administrators or help-desk members."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from otpgate import ber
from otpgate.admin.apppasswords import listing
from otpgate.admin.inventory import assign_token
from otpgate.admin.manage import reset_change, revoke_change, unlock_change
from otpgate.admin.pin import PinRefused, clear_pin_change, set_pin_change, valid_pin
from otpgate.directory.ldapdata import SCOPE_BASE
from otpgate.directory.records import OtpState, StateChange, UserEntry
from otpgate.errors import (
    AmbiguousUser,
    CodecError,
    DirectoryError,
    InventoryError,
    PolicyError,
    UserNotFound,
)
from otpgate.otp.scratch import generate_scratch_list
from otpgate.outofband.config import SmtpServer
from otpgate.outofband.mail import send_mail
from otpgate.outofband.scratchmail import (
    NoMailAddress,
    mail_address,
    new_list_change,
    outcome_text,
    scratch_mail,
)
from otpgate.web import render, render_apps, render_pin, render_suspend
from otpgate.web.base import MATCHES, SIZE_LIMIT_EXCEEDED, Reply
from otpgate.web.selfservice import SelfService
from otpgate.web.sessions import Session


class HelpDesk(SelfService):
    # -- help desk -----------------------------------------------------------------------------

    async def get_helpdesk(
        self,
        request: Any,
        session: Session | None,
        client: str,
        query: str | None = None,
        notice: str | None = None,
        error: str | None = None,
    ) -> Reply:
        if session is None:
            return self._redirect("/signin")
        if not session.helpdesk:
            return self._page("Refused", render.message("Help desk only."), session, 403)
        if query is None:
            raw = request.args.get(b"q", [b""])[0] if request is not None else b""
            query = raw.decode("utf-8", "replace").strip()
        found = None
        if query:
            try:
                user, state = await self._state(query)
                protected = await self._protected(user)
                found = render.helpdesk_user(
                    user.dn,
                    state,
                    session.csrf,
                    self.now(),
                    self.inventory is not None,
                    protected=protected,
                    mail=self._mail_servers() is not None,
                    channels=self.enroller.channels,
                    destinations=await self.enroller.destinations(user.dn, state),
                    suspension=render_suspend.user_suspension_block(
                        user.dn, state, session.csrf, self.now(), protected is not None
                    ),
                    row_actions=render_suspend.device_actions(
                        user.dn, state, session.csrf, self.now()
                    ),
                )
                pin = render_pin.helpdesk_pin(user.dn, state, session.csrf, protected is not None)
                found = render.Markup(found.html + pin.html + self._hd_apps(user.dn, state,
                                      session.csrf, protected is not None))  # fmt: skip
                self.audit(session, client, "view", "looked at the user", user=query, dn=user.dn)
            except (UserNotFound, AmbiguousUser):
                try:
                    found = render.matches(await self._search_users(query))
                except DirectoryError as exc:
                    error = error or f"{query}: {exc}"
            except (DirectoryError, CodecError) as exc:
                error = error or f"{query}: {exc}"
        body = render.helpdesk(session.csrf, query, found, notice, error)
        return self._page("Help desk", body, session)

    def _hd_apps(self, dn: str, state: OtpState, csrf: str, read_only: bool) -> str:
        """The user's app passwords, where the feature is on or the user holds some."""
        settings = self.config.app_passwords
        if not settings.enabled and not state.apps:
            return ""
        rows = listing(state, self.now())
        return render_apps.helpdesk_apps(dn, rows, self.app_places(), csrf, read_only).html

    def app_places(self) -> render_apps.Places:
        """Where app passwords may work, with the names shown for the places."""
        names = self.config.ldap_proxy.listener_names
        return render_apps.places_of(self.config.app_passwords, names)

    async def _protected(self, user: UserEntry) -> str | None:
        return await self.rights.protected(user.dn)

    async def _hd_target(
        self, form: dict[str, str], session: Session, client: str, action: str
    ) -> UserEntry | Reply:
        """The target of a help-desk action, or the reply refusing it (audited)."""
        target = form.get("user", "")
        try:
            user, _state = await self._state(target)
        except (DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        why = await self._protected(user)
        if why is None:
            return user
        self.audit(
            session,
            client,
            "refused",
            f"help-desk {action} of {why} (administrators and help-desk members are changed "
            "with the CLI)",
            user=target,
            dn=user.dn,
        )
        message = f"Refused: {user.dn} is {why}. Use the otpgate CLI for such accounts."
        page = await self.get_helpdesk(None, session, client, target, error=message)
        return Reply(page.body, 403, page.content_type)

    async def _search_users(self, query: str) -> list[tuple[str, str, str, str]]:
        """(DN, login name, UPN/mail, display name or cn) of users whose login name, UPN/mail
        or cn start with ``query``, sorted by login name."""
        d = self.config.directory
        prefix = query.encode("utf-8")[:128]
        names = (d.search_attribute, d.upn_attribute, "cn")
        prefixes = (ber.filter_prefix(a.encode(), prefix) for a in names)
        wanted = ber.filter_and(self._user_filter, ber.filter_or(*prefixes))
        conn = await self.gateway.read_pool.connection()
        try:
            shown = [d.search_attribute, d.upn_attribute, "displayName", "cn"]
            found = await conn.search(d.base_dn, wanted, shown, size_limit=MATCHES)
        except DirectoryError as exc:
            if exc.result_code != SIZE_LIMIT_EXCEEDED:
                raise
            raise DirectoryError(
                f"more than {MATCHES} users match: type more", exc.result_code
            ) from exc

        def first(entry: Any, *names: str) -> str:
            for name in names:
                values = entry.attributes.get(name.lower())
                if values:
                    return str(values[0].decode("utf-8", "replace"))
            return ""

        result = [
            (
                entry.dn,
                first(entry, d.search_attribute),
                first(entry, d.upn_attribute),
                first(entry, "displayName", "cn"),
            )
            for entry in found
        ]
        return sorted(result, key=lambda r: r[1].lower())

    async def _hd_change(
        self,
        form: dict[str, str],
        session: Session,
        client: str,
        action: str,
        detail: str,
        change: Callable[[OtpState], StateChange[Any]],
    ) -> Reply:
        user = await self._hd_target(form, session, client, action)
        if isinstance(user, Reply):
            return user
        target = form.get("user", "")
        try:
            await self.gateway.store.update(user, change)
        except (PolicyError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        token = form.get("token") or None
        self.audit(
            session, client, f"helpdesk-{action}", detail, user=target, dn=user.dn, token=token
        )
        return await self.get_helpdesk(None, session, client, target, notice=f"Done: {detail}.")

    async def hd_revoke(self, form: dict[str, str], session: Session, client: str) -> Reply:
        token_id = form.get("token", "")
        return await self._hd_change(
            form,
            session,
            client,
            "revoke",
            f"revoke {token_id}",
            lambda s: revoke_change(s, token_id),
        )

    async def hd_reset(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._hd_change(form, session, client, "reset", "reset", reset_change)

    async def hd_unlock(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._hd_change(form, session, client, "unlock", "unlock", unlock_change)

    async def hd_pin(self, form: dict[str, str], session: Session, client: str) -> Reply:
        """Set a user's PIN (the user tells it to the agent, or changes it afterwards)."""
        try:
            pin = valid_pin(form.get("pin", ""), form.get("pin2", ""))
        except PinRefused as exc:
            target = form.get("user", "")
            return await self.get_helpdesk(None, session, client, target, error=f"{exc}.")
        now = self.now()
        return await self._hd_change(
            form, session, client, "pin-set", "set PIN", lambda s: set_pin_change(s, pin, now)
        )

    async def hd_pin_clear(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._hd_change(
            form, session, client, "pin-clear", "clear PIN", clear_pin_change
        )

    async def hd_scratch(self, form: dict[str, str], session: Session, client: str) -> Reply:
        user = await self._hd_target(form, session, client, "scratch")
        if isinstance(user, Reply):
            return user
        target = form.get("user", "")
        try:
            codes, token_id = await self._new_scratch(user.dn)
        except (DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        self.audit(
            session,
            client,
            "helpdesk-scratch",
            "issued a scratch list",
            user=target,
            dn=user.dn,
            token=token_id,
        )
        return self._page("Scratch codes", render.scratch_codes(codes, target), session)

    def _mail_servers(self) -> tuple[SmtpServer, ...] | None:
        delivery = self.config.delivery
        return delivery.smtp if delivery is not None and delivery.smtp else None

    async def _mail_values(self, dn: str, attribute: str) -> list[bytes]:
        """The values of ``attribute`` in the user's own entry, read from the write server
        (where the list is written), by the service account."""
        conn = await self.gateway.write_pool.connection()
        entries = await conn.search(
            dn, ber.filter_present(b"objectClass"), [attribute], scope=SCOPE_BASE
        )
        for entry in entries:
            return list(entry.attributes.get(attribute.lower(), []))
        return []

    async def hd_scratch_mail(self, form: dict[str, str], session: Session, client: str) -> Reply:
        """A new list sent to the user's own address: read and check the address (nothing
        written otherwise), write the list, send it; the page and the audit trail show the
        masked address and the outcome, never a code."""
        target = form.get("user", "")
        servers = self._mail_servers()
        delivery = self.config.delivery
        if servers is None or delivery is None:
            return await self.get_helpdesk(
                None, session, client, target, error="No e-mail servers are configured."
            )
        user = await self._hd_target(form, session, client, "scratch-mail")
        if isinstance(user, Reply):
            return user
        attribute = delivery.mail_attribute
        try:
            address = mail_address(target, attribute, await self._mail_values(user.dn, attribute))
            codes, scratch = generate_scratch_list()
            now = self.now()
            token, _u = await self.gateway.store.update(
                user, lambda s: new_list_change(s, scratch, now)
            )
        except (NoMailAddress, PolicyError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        content = scratch_mail(target, self.config.otp.issuer, codes, delivery.mail_subject, now)
        del codes
        result = await send_mail(self.gateway.reactor, servers, address, content)
        del content
        outcome = outcome_text(result)
        self.audit(
            session,
            client,
            "helpdesk-scratch-mail",
            f"new scratch list {outcome}",
            user=target,
            dn=user.dn,
            token=token.id,
        )
        if result.ok:
            return await self.get_helpdesk(
                None,
                session,
                client,
                target,
                notice=f"New scratch list {token.id} {outcome}. Any previous list no longer works.",
            )
        message = (
            f"The new scratch list {token.id} is active but {outcome}. The previous list no "
            "longer works and nobody has the new one: issue another (shown here, or sent "
            "again once mail works)."
        )
        return await self.get_helpdesk(None, session, client, target, error=message)

    async def hd_assign(self, form: dict[str, str], session: Session, client: str) -> Reply:
        target = form.get("user", "")
        serial = form.get("serial", "").strip()
        if self.inventory is None or not serial:
            return await self.get_helpdesk(
                None, session, client, target, error="Give the serial of an inventory token."
            )
        user = await self._hd_target(form, session, client, "assign")
        if isinstance(user, Reply):
            return user
        try:
            token = await assign_token(
                self.inventory, serial, user.dn, self.config.otp.max_tokens_per_user
            )
        except (PolicyError, InventoryError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        self.audit(
            session,
            client,
            "helpdesk-assign",
            f"assigned serial {serial}",
            user=target,
            dn=user.dn,
            token=token.id,
        )
        return await self.get_helpdesk(
            None, session, client, target, notice=f"Assigned {serial} as {token.id}."
        )
