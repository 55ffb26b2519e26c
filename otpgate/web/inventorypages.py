"""The help desk's inventory pages: list and search the hardware tokens in stock (paged,
sorted by serial, type or label), find the tokens users hold, and act on one token: add by
hand, rename, remove, assign to a user, return a user's token to the inventory.

The list is served from an in-memory index (``invlive``); the rows a page shows are read
again and decrypted for that page.  Every change is a CSRF-checked POST (``portal``), goes
through the admin flows the CLI runs (``admin/inventory.py``, ``admin/imports.py``) on the
gateway's driver (``InventoryStore``: compare-and-swap, replication guard) and is an audit
event.  The import pages are ``importpages``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from otpgate.admin.imports import clash_problems
from otpgate.admin.inventory import assign_token, relabel, unassign_token
from otpgate.admin.invindex import SORTS, Row, RowIndex
from otpgate.directory.inventory import check_serial
from otpgate.errors import CodecError, DirectoryError, InventoryError, PolicyError
from otpgate.importers import ImportedToken, ImportResult, check_key
from otpgate.otp.oath import check_counter, check_digits, check_period
from otpgate.tokens import Secret, Token, TokenType, check_label, new_token_id
from otpgate.web import render
from otpgate.web.base import Reply
from otpgate.web.helpdesk import HelpDesk
from otpgate.web.invlive import LiveIndex, PortalIndexes
from otpgate.web.render_inventory import Holder, ListView, TokenView, inventory_page, token_page
from otpgate.web.sessions import Session

PAGE_SIZE = 50
MAX_PAGE = 100_000
MAX_QUERY = 64
HOLDERS_SHOWN = 50
TITLE = "Token inventory"


def _arg(request: Any, name: str) -> str:
    if request is None:
        return ""
    raw = request.args.get(name.encode(), [b""])[0]
    return str(raw.decode("utf-8", "replace").strip())


class InventoryPages(HelpDesk):
    # -- the indexes -------------------------------------------------------------------------

    @property
    def _indexes(self) -> PortalIndexes:
        """Made at first use: a portal nobody asks for the inventory reads nothing."""
        made: PortalIndexes | None = self.__dict__.get("_portal_indexes")
        if made is None:
            assert self.inventory is not None
            made = PortalIndexes(self.gateway, self.clock, self.inventory, self._user_filter)
            self.__dict__["_portal_indexes"] = made
        return made

    def _live(self, which: str) -> LiveIndex:
        return self._indexes.live(which)

    def _wrote(self, *which: str) -> None:
        """This portal changed the inventory (or users' tokens): the next page reads it."""
        if self.inventory is not None:
            self._indexes.wrote(*which)

    async def warm_inventory(self) -> None:
        """Read the indexes once, soon after the gateway starts (``service.py``)."""
        if self.inventory is not None:
            await self._indexes.warm()

    async def _holders(self, serial_or_query: str, exact: bool) -> tuple[list[Holder], int]:
        return await self._indexes.holders(serial_or_query, exact, HOLDERS_SHOWN)

    async def _shown(self, index: RowIndex, view: ListView) -> tuple[list[Row], int]:
        """The rows of ``view``'s page, read from the directory and decrypted now (only
        these); entries gone since the index saw them are dropped and the page filled
        again."""
        live = self._live("stock")
        assert self.inventory is not None
        for _attempt in range(3):
            offset = (view.page - 1) * view.size
            rows, total = index.page(view.sort, view.descending, view.query, offset, view.size)
            found = await self.inventory.read_entries([r.serial for r in rows])
            fresh = {(e.first("cn") or b"").decode("utf-8", "replace").lower(): e for e in found}
            shown: list[Row] = []
            gone = False
            for row in rows:
                entry = fresh.get(row.serial.lower())
                if entry is None:
                    live.drop(row.serial)
                    gone = True
                    continue
                shown.extend(live.shown(entry))
            if not gone:
                return shown, total
        return shown, total

    # -- pages ---------------------------------------------------------------------------------

    def _no_inventory(self, session: Session) -> Reply:
        text = "There is no inventory: [directory] inventory_dn is not set."
        return self._page(TITLE, render.message(text), session, 404)

    async def get_inventory(
        self,
        request: Any,
        session: Session | None,
        client: str,
        notice: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> Reply:
        if session is None:
            return self._redirect("/signin")
        if self.inventory is None:
            return self._no_inventory(session)
        query = _arg(request, "q")[:MAX_QUERY]
        sort = _arg(request, "sort")
        page_text = _arg(request, "page")
        view = ListView(
            query=query,
            sort=sort if sort in SORTS else "serial",
            descending=_arg(request, "dir") == "desc",
            page=min(int(page_text), MAX_PAGE) if page_text.isdigit() and page_text != "0" else 1,
            size=PAGE_SIZE,
            total=0,
        )
        rows: list[Row] = []
        holders = None
        more = 0
        try:
            index = await self._live("stock").current()
            rows, total = await self._shown(index, view)
            view = ListView(view.query, view.sort, view.descending, view.page, view.size, total)
            if not rows and view.page > view.pages:  # past the end (the list got shorter)
                view = ListView(view.query, view.sort, view.descending, view.pages, view.size, 0)
                rows, total = await self._shown(index, view)
                view = ListView(view.query, view.sort, view.descending, view.page, view.size, total)
            if query:
                holders, more = await self._holders(query, exact=False)
        except (DirectoryError, CodecError) as exc:
            error = error or f"The inventory cannot be read: {exc}"
        body = inventory_page(session.csrf, view, rows, holders, more, notice, error)
        return self._page(TITLE, body, session, status)

    async def get_inventory_token(
        self,
        request: Any,
        session: Session | None,
        client: str,
        serial: str | None = None,
        notice: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> Reply:
        if session is None:
            return self._redirect("/signin")
        if self.inventory is None:
            return self._no_inventory(session)
        serial = serial if serial is not None else _arg(request, "serial")
        shown: TokenView | None = None
        holders: list[Holder] = []
        try:
            check_serial(serial)
            try:
                item = await self.inventory.get(serial)
            except InventoryError:
                item = None
            if item is not None:
                token = item.token
                shown = TokenView(
                    item.serial,
                    token.type.value if token else "",
                    token.label if token else "",
                    token.created if token else 0,
                    "available" if token else "being assigned",
                    token.digits if token else 0,
                    token.period if token else 0,
                    item.last,
                )
            else:
                holders, _more = await self._holders(serial, exact=True)
        except (DirectoryError, CodecError) as exc:
            error = error or f"{serial}: {exc}"
        body = token_page(session.csrf, shown, holders, serial, notice, error)
        return self._page(f"Token {serial}", body, session, status)

    # -- actions (each: CSRF-checked by the portal, written through admin/, audited) -----------

    async def _refused(self, session: Session, client: str, why: str) -> Reply:
        return await self.get_inventory(None, session, client, error=why, status=400)

    async def inv_add(self, form: dict[str, str], session: Session, client: str) -> Reply:
        if self.inventory is None:
            return self._no_inventory(session)
        try:
            token, secret, last = _hand_token(form, int(self.now()))
        except ValueError as exc:
            return await self._refused(session, client, f"Not added: {exc}")
        try:
            index = await self._live("stock").current()
            one = ImportResult((ImportedToken(1, token, secret, last),), (), 1, "csv")
            clashes = clash_problems(one, index.serials(), index.keys())
            if clashes:
                raise InventoryError(clashes[0].message)
            await self.inventory.add(token, secret, last)
        except (DirectoryError, CodecError) as exc:
            return await self._refused(session, client, f"Not added: {exc}")
        self._wrote("stock")
        self.audit(
            session, client, "helpdesk-inventory-add",
            f"added {token.type.value} token {token.serial} by hand", token=token.id,
        )  # fmt: skip
        return await self.get_inventory_token(
            None, session, client, token.serial, notice=f"Added {token.serial}."
        )

    async def inv_rename(self, form: dict[str, str], session: Session, client: str) -> Reply:
        if self.inventory is None:
            return self._no_inventory(session)
        serial = form.get("serial", "")
        label = form.get("label", "").strip()
        try:
            change = relabel(label)
            if await self.inventory.rewrite(serial, change) is None:
                raise InventoryError(f"serial {serial} is being assigned right now")
        except (ValueError, DirectoryError, CodecError) as exc:
            return await self.get_inventory_token(
                None, session, client, serial, error=f"Not renamed: {exc}", status=400
            )
        self._wrote("stock")
        self.audit(session, client, "helpdesk-inventory-rename", f"label of {serial}: {label!r}")
        return await self.get_inventory_token(
            None, session, client, serial, notice=f"Renamed {serial}."
        )

    async def inv_delete(self, form: dict[str, str], session: Session, client: str) -> Reply:
        if self.inventory is None:
            return self._no_inventory(session)
        serial = form.get("serial", "")
        try:
            await self.inventory.delete(serial)
        except (DirectoryError, CodecError) as exc:
            return await self.get_inventory_token(
                None, session, client, serial, error=f"Not removed: {exc}", status=400
            )
        self._live("stock").drop(serial)
        self.audit(session, client, "helpdesk-inventory-delete", f"removed {serial}")
        return await self.get_inventory(None, session, client, notice=f"Removed {serial}.")

    async def inv_assign(self, form: dict[str, str], session: Session, client: str) -> Reply:
        if self.inventory is None:
            return self._no_inventory(session)
        serial = form.get("serial", "").strip()
        target = form.get("user", "").strip()
        if not serial or not target:
            return await self.get_inventory_token(
                None, session, client, serial, error="Give the user.", status=400
            )
        user = await self._hd_target(form, session, client, "assign")
        if isinstance(user, Reply):
            return user
        try:
            token = await assign_token(
                self.inventory, serial, user.dn, self.config.otp.max_tokens_per_user
            )
        except (PolicyError, DirectoryError, CodecError) as exc:
            return await self.get_inventory_token(
                None, session, client, serial, error=f"Not assigned: {exc}", status=400
            )
        self._live("stock").drop(serial)
        self._wrote("held")
        self.audit(
            session, client, "helpdesk-assign", f"assigned serial {serial}",
            user=target, dn=user.dn, token=token.id,
        )  # fmt: skip
        return await self.get_helpdesk(
            None, session, client, target, notice=f"Assigned {serial} as {token.id}."
        )

    async def inv_unassign(self, form: dict[str, str], session: Session, client: str) -> Reply:
        if self.inventory is None:
            return self._no_inventory(session)
        target = form.get("user", "").strip()
        token_id = form.get("token", "").strip()
        user = await self._hd_target(form, session, client, "unassign")
        if isinstance(user, Reply):
            return user
        try:
            token, _secret, last = await unassign_token(self.inventory, user.dn, token_id)
        except (PolicyError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(
                None, session, client, target, error=f"Not returned to the inventory: {exc}"
            )
        self._wrote("stock", "held")
        counter = f" (last used counter {last})" if last >= 0 else ""
        self.audit(
            session, client, "helpdesk-unassign",
            f"returned serial {token.serial} to the inventory{counter}",
            user=target, dn=user.dn, token=token.id,
        )  # fmt: skip
        notice = f"{token.serial} is back in the inventory{counter}."
        return await self.get_inventory_token(None, session, client, token.serial, notice=notice)


def _hand_token(form: dict[str, str], now: int) -> tuple[Token, Secret, int]:
    """The token of the "add by hand" form (ValueError naming the field)."""
    serial = form.get("serial", "").strip()
    try:
        check_serial(serial)
    except InventoryError as exc:
        raise ValueError(str(exc)) from exc
    kind_text = form.get("type", "").strip().lower()
    if kind_text not in ("totp", "hotp"):
        raise ValueError("type: totp or hotp")
    kind = TokenType(kind_text)
    cleaned = "".join(form.get("key", "").split()).replace("-", "").upper().rstrip("=")
    try:
        key = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("key: not Base32") from exc
    check_key(key, "key")

    def number(name: str, default: str) -> int:
        text = form.get(name, "").strip() or default
        if not text.isdigit() or len(text) > 20:
            raise ValueError(f"{name}: {text[:20]!r} is not a number")
        return int(text)

    digits = check_digits(number("digits", "6"))
    period = check_period(number("period", "30")) if kind is TokenType.TOTP else 30
    last = -1
    if kind is TokenType.HOTP:
        counter = check_counter(number("counter", "0"), "counter")
        last = counter - 1
    label = check_label(form.get("label", "").strip() or serial)
    if len(label) > 64:
        raise ValueError("label: at most 64 characters")
    token = Token(
        id=new_token_id(), type=kind, created=now, serial=serial, label=label,
        digits=digits, period=period,
    )  # fmt: skip
    return token, Secret(key), last
