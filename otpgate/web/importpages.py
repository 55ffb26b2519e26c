"""The help desk's import: upload a file (PSKC, OATH CSV, Yubico CSV, ``otpauth://`` URIs),
see what it would import with each problem row explained (a dry run: nothing written), then
import it with a second POST.  The parsed file stays in the server-side session between
the two (never in the page); ``Error_<file>`` is made by the CLI's own code
(``admin.imports.error_text``), so it is the CLI's file to the byte.  Rows naming a user
are assigned after the import with the one assignment flow; the help desk's rule holds:
administrators and help-desk members are not given tokens here (a problem row).
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from twisted.internet import threads
from twisted.logger import Logger

from otpgate.admin.imports import (
    Assigning,
    Assignment,
    add_rows,
    assign_rows,
    clash_problems,
    error_text,
    remove_rows,
    user_problems,
)
from otpgate.errors import CodecError, DirectoryError, ImportFormatError, PskcKeyError
from otpgate.importers import ImportResult, RowProblem, with_problems
from otpgate.importers.errorfile import error_file_name
from otpgate.importers.formats import FORMATS, TEMPLATES, parse_file
from otpgate.web import render_import
from otpgate.web.base import Reply
from otpgate.web.bodycap import MAX_BODY, MAX_UPLOAD
from otpgate.web.inventorypages import InventoryPages
from otpgate.web.multipart import Upload, parse_multipart
from otpgate.web.render_inventory import BASE
from otpgate.web.sessions import PendingImport, Session

IMPORT_UPLOAD = (BASE + "/import").encode()
TEMPLATE_PATHS = {f"{BASE}/template/{name}".encode(): name for name in TEMPLATES}
TITLE = "Import tokens"
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
log = Logger()


def safe_name(filename: str) -> str:
    """The uploaded file's name as the portal uses it (``Error_<name>``): its last path
    component, in characters safe in a header and a file system."""
    name = PurePath(filename.replace("\\", "/")).name
    return _UNSAFE_NAME.sub("_", name)[:100].lstrip(".") or "upload"


class ImportPages(InventoryPages):
    # -- the upload's body and form --------------------------------------------------------------

    def body_limit(self, path: bytes, headers: Any) -> int | None:
        """``CappedRequest``'s question, before the body is read: the upload form may send
        ``MAX_UPLOAD`` bytes, and only with the cookie of a live help-desk session (anyone
        else's body stays within the forms' 16 KiB).  Membership is read again once the
        request is handled, as for every help-desk page."""
        if path.split(b"?", 1)[0] != IMPORT_UPLOAD:
            return None
        raw = headers.getRawHeaders(b"cookie")
        session = self.sessions.peek(self._cookie_in(raw[0] if raw else None), self.now())
        if session is not None and session.helpdesk and session.otp_verified:
            return MAX_UPLOAD
        return None

    def _post_form(self, request: Any) -> tuple[dict[str, str] | None, dict[str, Upload]]:
        """A POST's fields, and for the upload form its files too (``multipart/form-data``)."""
        if request.path != IMPORT_UPLOAD:
            return self._form(request), {}
        limit = max(MAX_UPLOAD, MAX_BODY)
        body = request.content.read(limit + 1) if request.content is not None else b""
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        parsed = parse_multipart(body, content_type) if len(body) <= limit else None
        if parsed is None:
            return None, {}
        return parsed.fields, parsed.files

    # -- checks ------------------------------------------------------------------------------------

    async def _checked(self, parsed: ImportResult) -> ImportResult:
        """The parsed file with every problem the import would meet: serials and keys
        already in the inventory, users who are unknown, would have too many devices, or
        are administrators or help-desk members."""
        assert self.inventory is not None
        index = await self._live("stock").current()
        extra = clash_problems(parsed, index.serials(), index.keys())
        store = self.gateway.store
        problems, users = await self.inventory.check(
            user_problems(store.mapper, parsed, self.config.otp.max_tokens_per_user)
        )
        extra += problems
        for name, user in users.items():
            why = await self.rights.protected(user.dn)
            if why is not None:
                extra += [
                    RowProblem(
                        row.row,
                        f"user {name!r} is {why}: the help desk does not give tokens to such "
                        "accounts (use the otpgate CLI)",
                    )
                    for row in parsed.tokens
                    if row.user == name
                ]
        return with_problems(parsed, extra)

    # -- pages -------------------------------------------------------------------------------------

    async def inv_upload(
        self, form: dict[str, str], files: dict[str, Upload], session: Session, client: str
    ) -> Reply:
        if self.inventory is None:
            return self._no_inventory(session)
        upload = files.get("file")
        kind = form.get("format", "")
        if upload is None or not upload.data:
            return await self._refused(session, client, "Choose a file to import.")
        if kind not in FORMATS:
            return await self._refused(session, client, "Choose the file's format.")
        name = safe_name(upload.filename)
        psk_text = form.get("psk", "").strip()
        password = form.get("password", "") or None
        try:
            psk = bytes.fromhex(psk_text) if psk_text else None
        except ValueError:
            return await self._refused(session, client, "The pre-shared key is not hexadecimal.")
        try:
            # PBKDF2 and the parsing of a large file run off the reactor's thread.
            reactor = self.gateway.reactor
            parsed: ImportResult = await threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), parse_file, kind, upload.data,
                psk=psk, password=password,
            )  # fmt: skip
            result = await self._checked(parsed)
        except PskcKeyError:
            why = (
                "it is encrypted, and the password or pre-shared key given does not decrypt it"
                if psk is not None or password is not None
                else "it is encrypted: give its PSKC password or pre-shared key"
            )
            self.audit(session, client, "helpdesk-import-check", f"{name}: not decrypted")
            return await self._refused(session, client, f"{name} cannot be read: {why}.")
        except ImportFormatError as exc:
            self.audit(session, client, "helpdesk-import-check", f"{name}: unreadable: {exc}")
            return await self._refused(session, client, f"{name} cannot be imported: {exc}")
        except (DirectoryError, CodecError) as exc:
            return await self._refused(session, client, f"{name} cannot be checked: {exc}")
        session.pending_import = PendingImport(
            name, kind, upload.data, result, self.now(), parsed=parsed
        )
        bad = len({p.row for p in result.problems})
        self.audit(
            session, client, "helpdesk-import-check",
            f"checked {name}: {result.rows} row(s), {len(result.tokens)} good, {bad} with problems",
        )  # fmt: skip
        body = render_import.dry_run(
            session.csrf, name, kind, result, error_file_name(PurePath(name))
        )
        return self._page(TITLE, body, session)

    async def inv_import(self, form: dict[str, str], session: Session, client: str) -> Reply:
        pending = session.pending_import
        if self.inventory is None:
            return self._no_inventory(session)
        if pending is None or pending.imported:
            return await self._refused(session, client, "Nothing to import: upload a file.")
        partial = form.get("partial") == "1"
        inventory = self.inventory
        error_name = error_file_name(PurePath(pending.filename))
        try:
            result = await self._checked(pending.parsed)  # again: the directory may have moved
        except (DirectoryError, CodecError) as exc:
            return await self._refused(session, client, f"Nothing was imported: {exc}")
        pending.result = result
        if result.problems and not partial:
            body = render_import.dry_run(
                session.csrf, pending.filename, pending.kind, result, error_name,
                "Nothing was imported: rows have problems now.",
            )  # fmt: skip
            return self._page(TITLE, body, session, 409)
        added: list[str] = []
        try:
            late = await inventory.flow(add_rows(inventory.mapper, result, partial, added))
        except Exception as exc:
            await self._undo(added)
            self.audit(
                session, client, "helpdesk-import",
                f"import of {pending.filename} failed, nothing imported: {exc}",
            )  # fmt: skip
            return await self._refused(session, client, f"Nothing was imported: {exc}")
        result = with_problems(result, late)
        self._wrote("stock")
        assigned = await self._assign(result, added)
        self._audit_import(session, client, pending.filename, added, assigned, result)
        if result.problems:
            pending.imported, pending.result = True, result
        else:
            session.pending_import = None  # nothing left to download: forget the seeds
        body = render_import.done(
            session.csrf, added, assigned, result, error_name, inventory.mapper.container
        )
        return self._page(TITLE, body, session)

    async def _undo(self, added: list[str]) -> None:
        if not added or self.inventory is None:
            return
        try:
            await self.inventory.flow(remove_rows(self.inventory.mapper, added))
        except Exception:  # already failing: the page says nothing was imported
            log.failure("removing the rows of a failed import failed: {serials}", serials=added)

    async def _assign(self, result: ImportResult, added: list[str]) -> list[Assignment]:
        assert self.inventory is not None
        users = sorted({row.user for row in result.tokens if row.user and row.serial in added})
        if not users:
            return []
        store = self.gateway.store
        assigning = Assigning(
            store.mapper, self.config.otp.max_tokens_per_user, store.config.cas_retries
        )
        mapper = self.inventory.mapper
        done = await self.inventory.flow(assign_rows(assigning, mapper, result, set(added)), *users)
        for a in done:
            if a.token is not None:
                self._live("stock").drop(a.serial)
        self._wrote("held")
        return done

    def _audit_import(
        self,
        session: Session,
        client: str,
        filename: str,
        added: list[str],
        assigned: list[Assignment],
        result: ImportResult,
    ) -> None:
        skipped = len({p.row for p in result.problems})
        self.audit(
            session, client, "helpdesk-import",
            f"imported {len(added)} token(s) from {filename}; {skipped} row(s) left out",
        )  # fmt: skip
        for a in assigned:
            if a.token is not None:
                self.audit(
                    session, client, "helpdesk-assign",
                    f"assigned serial {a.serial} (import of {filename})",
                    user=a.user, token=a.token.id,
                )  # fmt: skip

    async def inv_import_cancel(
        self, form: dict[str, str], session: Session, client: str
    ) -> Reply:
        session.pending_import = None
        return self._redirect(BASE)

    async def inv_error_file(self, form: dict[str, str], session: Session, client: str) -> Reply:
        """``Error_<file>``: the uploaded file with each problem marked before its row."""
        pending = session.pending_import
        if pending is None or not pending.result.problems:
            return await self._refused(session, client, "No file with problems to download.")
        name = error_file_name(PurePath(pending.filename))
        self.audit(session, client, "view", f"downloaded {name} (the uploaded file, marked)")
        disposition = f'attachment; filename="{name}"'.encode()
        return Reply(
            error_text(pending.data, pending.result),
            content_type=b"application/octet-stream",
            headers=((b"content-disposition", disposition),),
        )

    async def get_template(self, request: Any, session: Session | None, client: str) -> Reply:
        if session is None:
            return self._redirect("/signin")
        name = TEMPLATE_PATHS.get(request.path, "")
        if name not in TEMPLATES:
            return Reply(b"not found\n", 404, b"text/plain")
        disposition = f'attachment; filename="otpgate-{name}"'.encode()
        return Reply(
            TEMPLATES[name].encode(),
            content_type=b"text/csv; charset=utf-8",
            headers=((b"content-disposition", disposition),),
        )
