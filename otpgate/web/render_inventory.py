"""HTML of the help desk's inventory pages (pure; every value escaped as in ``render``):
the list (search, sort, pages), one token, adding one by hand.  The import pages are
``render_import``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from otpgate.admin.invindex import AVAILABLE, SORTS, Row
from otpgate.importers.formats import FORMAT_NAMES, FORMATS
from otpgate.web.render import csrf_field, h, message, when
from otpgate.web.render_forms import field

BASE = "/helpdesk/inventory"
REMOVE = BASE + "/delete"


@dataclass(frozen=True)
class ListView:
    query: str
    sort: str
    descending: bool
    page: int
    """1-based."""
    size: int
    total: int
    """Tokens in the inventory matching ``query``."""

    @property
    def pages(self) -> int:
        return max((self.total + self.size - 1) // self.size, 1)

    def link(self, **changes: object) -> str:
        params = {
            "q": self.query,
            "sort": self.sort,
            "dir": "desc" if self.descending else "asc",
            "page": str(self.page),
        }
        params.update({k: str(v) for k, v in changes.items()})
        return f"{BASE}?{urlencode({k: v for k, v in params.items() if v})}"


@dataclass(frozen=True)
class Holder:
    """An assigned token found by a search, with the user who holds it."""

    row: Row
    user: str
    """The user's DN ("" when it cannot be found: a state entry whose user is gone)."""


def token_link(serial: str) -> str:
    return f"{BASE}/token?{urlencode({'serial': serial})}"


def _header(view: ListView, sort: str, title: str) -> str:
    if view.sort == sort:
        arrow = " ▼" if view.descending else " ▲"
        target = view.link(sort=sort, dir="asc" if view.descending else "desc", page=1)
    else:
        arrow = ""
        target = view.link(sort=sort, dir="asc", page=1)
    return f'<th><a id="sort-{h(sort)}" href="{h(target)}">{h(title)}{arrow}</a></th>'


def stock_table(view: ListView, rows: Sequence[Row]) -> str:
    if not rows:
        what = "No token matches." if view.query else "The inventory is empty."
        return f'<p id="no-tokens">{h(what)}</p>'
    titles = ("Serial", "Type", "Label")
    heads = "".join(_header(view, s, t) for s, t in zip(SORTS, titles, strict=True))
    body = "".join(
        f'<tr data-serial="{h(r.serial)}"><td><a href="{h(token_link(r.serial))}">'
        f"{h(r.serial)}</a></td><td>{h(r.kind or '-')}</td><td>{h(r.label or '-')}</td>"
        f"<td>{h(when(r.created) if r.created else '-')}</td><td>{h(r.state)}</td></tr>"
        for r in rows
    )
    return (
        f'<table id="inventory"><tr>{heads}<th>imported</th><th>state</th></tr>{body}</table>'
    )


def pager(view: ListView) -> str:
    parts = [f'<span id="page-of">Page {view.page} of {view.pages}</span>']
    if view.page > 1:
        parts.insert(0, f'<a id="prev" href="{h(view.link(page=view.page - 1))}">Previous</a>')
    if view.page < view.pages:
        parts.append(f'<a id="next" href="{h(view.link(page=view.page + 1))}">Next</a>')
    return f'<p class="pager">{" ".join(parts)}</p>'


def holders_table(found: Sequence[Holder], more: int) -> str:
    if not found:
        return '<p id="no-assigned">No assigned token matches.</p>'
    body = "".join(
        f'<tr data-serial="{h(x.row.serial)}"><td><a href="{h(token_link(x.row.serial))}">'
        f"{h(x.row.serial)}</a></td><td>{h(x.row.kind)}</td><td>{h(x.row.label or '-')}</td>"
        f"<td>{_user_link(x.user)}</td></tr>"
        for x in found
    )
    tail = f'<p id="more-assigned">… and {more} more: search for more of the serial.</p>'
    return (
        '<table id="assigned"><tr><th>serial</th><th>type</th><th>label</th>'
        f"<th>assigned to</th></tr>{body}</table>" + (tail if more else "")
    )


def _user_link(dn: str) -> str:
    if not dn:
        return "(a user who is gone)"
    return f'<a href="/helpdesk?{h(urlencode({"q": dn}))}">{h(dn)}</a>'


def inventory_page(
    csrf: str,
    view: ListView,
    rows: Sequence[Row],
    holders: Sequence[Holder] | None,
    more: int = 0,
    notice: str | None = None,
    error: str | None = None,
) -> str:
    """The list, the search, and the forms to add and import tokens."""
    search = (
        f'<form method="get" action="{BASE}"><label for="inv-q">Serial or label contains'
        f'</label><input type="text" id="inv-q" name="q" value="{h(view.query)}">'
        f'<input type="hidden" name="sort" value="{h(view.sort)}">'
        '<button id="inv-search" type="submit">Search</button></form>'
    )
    counted = f"{view.total} token(s) in the inventory" + (
        f" match {view.query!r}" if view.query else ""
    )
    html = (
        message(notice, "notice")
        + message(error)
        + search
        + f'<h2>Unassigned tokens</h2><p id="total">{h(counted)}.</p>'
        + stock_table(view, rows)
        + pager(view)
    )
    if holders is not None:
        html += "<h2>Assigned to users</h2>" + holders_table(holders, more)
    return html + add_form(csrf) + import_form(csrf)


def add_form(csrf: str) -> str:
    number = {"inputmode": "numeric"}
    return (
        f'<h2>Add a token by hand</h2><form method="post" action="{BASE}/add" '
        f'autocomplete="off">{csrf_field(csrf)}'
        + field("add-serial", "serial", "Serial", hint="As printed on the token",
                extra={"maxlength": "64", "required": ""})
        + field("add-key", "key", "Key (Base32)", kind="password", hint="Shown only here, "
                "never again", extra={"required": ""})
        + '<label for="add-type">Type</label><select id="add-type" name="type">'
        '<option value="totp">TOTP (time)</option><option value="hotp">HOTP (counter)</option>'
        "</select>"
        + field("add-digits", "digits", "Digits", value="6", extra=number)
        + field("add-period", "period", "Period in seconds", value="30", hint="TOTP only",
                extra=number)
        + field("add-counter", "counter", "Next counter", value="0",
                hint="HOTP only: the counter of the next code the token shows", extra=number)
        + field("add-label", "label", "Label (optional)", extra={"maxlength": "64"})
        + '<p><button id="add" type="submit">Add to the inventory</button></p></form>'
    )  # fmt: skip


def import_form(csrf: str) -> str:
    options = "".join(f'<option value="{h(k)}">{h(FORMAT_NAMES[k])}</option>' for k in FORMATS)
    return (
        f'<h2>Import a file</h2><form method="post" action="{BASE}/import" '
        f'enctype="multipart/form-data" autocomplete="off">{csrf_field(csrf)}'
        f'<label for="imp-format">Format</label><select id="imp-format" name="format">{options}'
        '</select><label for="imp-file">File</label>'
        '<input type="file" id="imp-file" name="file" required>'
        + field("imp-password", "password", "PSKC password", kind="password",
                hint="For a password-encrypted PSKC file")
        + field("imp-psk", "psk", "PSKC pre-shared key", kind="password",
                hint="In hexadecimal, for a PSKC file encrypted with a key")
        + '<p><button id="imp-check" type="submit">Check the file</button> (nothing is '
        "imported until you confirm)</p></form>"
        "<p>CSV templates: "
        f'<a id="tpl-oath" href="{BASE}/template/oath.csv" download>OATH CSV</a>, '
        f'<a id="tpl-yubico" href="{BASE}/template/yubico.csv" download>Yubico CSV</a>.</p>'
    )  # fmt: skip


@dataclass(frozen=True)
class TokenView:
    """One inventory token, read and decrypted for its page (never its key)."""

    serial: str
    kind: str
    label: str
    created: int
    state: str
    digits: int = 0
    period: int = 0
    last: int = -1


def token_page(
    csrf: str,
    token: TokenView | None,
    holders: Sequence[Holder],
    serial: str,
    notice: str | None = None,
    error: str | None = None,
) -> str:
    """An inventory token with rename, assign and delete; or, for a serial users hold,
    who holds it, with "return to the inventory"."""
    html = message(notice, "notice") + message(error)
    if token is not None:
        html += _stock_token(csrf, token)
    for holder in holders:
        html += _held_token(csrf, holder)
    if token is None and not holders:
        html += f'<p id="not-found">No token {h(serial)} in the inventory or with a user.</p>'
    return html + f'<p><a id="back" href="{BASE}">Back to the inventory</a></p>'


def _stock_token(csrf: str, t: TokenView) -> str:
    facts = [("Serial", t.serial), ("Type", t.kind or "-"), ("Label", t.label or "-")]
    if t.digits:
        facts.append(("Digits", str(t.digits)))
    if t.kind == "totp" and t.period:
        facts.append(("Period", f"{t.period} s"))
    if t.last >= 0:
        facts.append(("Last used counter", str(t.last)))
    facts += [("Imported", when(t.created) if t.created else "-"), ("State", t.state)]
    rows = "".join(f"<tr><th>{h(k)}</th><td>{h(v)}</td></tr>" for k, v in facts)
    html = f'<h2 id="token-serial">{h(t.serial)}</h2><table id="token">{rows}</table>'
    if t.state != AVAILABLE:
        return html
    hidden = f'<input type="hidden" name="serial" value="{h(t.serial)}">'
    return html + (
        f'<form method="post" action="{BASE}/rename">{csrf_field(csrf)}{hidden}'
        '<label for="new-label">New label</label>'
        f'<input type="text" id="new-label" name="label" maxlength="64" value="{h(t.label)}">'
        '<button id="rename" type="submit">Rename</button></form>'
        f'<form method="post" action="{BASE}/assign">{csrf_field(csrf)}{hidden}'
        '<label for="assign-user">Assign to the user (name, e-mail/UPN or DN)</label>'
        '<input type="text" id="assign-user" name="user" maxlength="1024">'
        '<button id="assign" type="submit">Assign</button></form>'
    ) + _remove_form(csrf, hidden)


def _remove_form(csrf: str, hidden: str) -> str:
    ask = "Remove this token from the inventory? Its key is gone for good."
    return (
        f'<form method="post" action="{REMOVE}" data-confirm="{h(ask)}">{csrf_field(csrf)}'
        f'{hidden}<button id="delete" type="submit">Remove for good</button></form>'
    )


def _held_token(csrf: str, holder: Holder) -> str:
    r = holder.row
    facts = [("Serial", r.serial), ("Type", r.kind), ("Label", r.label or "-")]
    rows = "".join(f"<tr><th>{h(k)}</th><td>{h(v)}</td></tr>" for k, v in facts)
    html = (
        f'<h2 class="held">{h(r.serial)}: assigned to {_user_link(holder.user)}</h2>'
        f'<table class="held-token">{rows}</table>'
    )
    if not holder.user:
        return html
    return html + (
        f'<form method="post" action="{BASE}/unassign" data-confirm="Take this token from '
        f'the user and return it to the inventory?">{csrf_field(csrf)}'
        f'<input type="hidden" name="user" value="{h(holder.user)}">'
        f'<input type="hidden" name="token" value="{h(r.token_id)}">'
        f'<button id="unassign-{h(r.token_id)}" type="submit">Return to the inventory</button>'
        "</form>"
    )
