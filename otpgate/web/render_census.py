"""HTML of the help desk's census page (pure; every value escaped as in ``render``): the
filters with their counts, one row per account, the suggested exemptions, where the numbers
come from and when they were computed.  Account names, DNs and addresses are what clients
sent: they are text here, never markup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from otpgate.census import FILTERS, AccountRow
from otpgate.web.render import h, message, when, when_html

if TYPE_CHECKING:
    from otpgate.web.censuspage import Snapshot

BASE = "/helpdesk/census"
FILTER_TITLES = (
    ("all", "all"),
    ("no-token", "no token yet"),
    ("would-refuse", "would be refused"),
    ("service", "looks like a service"),
)
MAX_ROWS = 1000
"""Rows shown at most (the busiest first within each verdict); the CLI lists them all."""
RELOAD_SECONDS = 2
"""The "scanning…" page reloads itself this often (``app.js``; a link without script)."""


def filter_link(only: str) -> str:
    return BASE if only == "all" else f"{BASE}?{urlencode({'only': only})}"


def no_audit_file() -> str:
    return (
        '<p class="notice" id="census-no-file">The census reads the audit trail, and '
        "<code>[logging] file</code> is not set: the audit events go to the gateway's log, "
        "where the census cannot read them. Set <code>file</code> (JSON lines with "
        "<code>json = true</code>, or text lines; rotated files are read too) and the page "
        "shows who binds from the events written from then on.</p>"
    )


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def scanning(done: int, total: int) -> str:
    part = f" ({_size(done)} of {_size(total)})" if total else ""
    return (
        f'<p class="notice" id="census-scanning" data-reload="{RELOAD_SECONDS}">'
        f"Scanning the audit trail{h(part)}… This page shows the census once it is done. "
        f'<a id="census-reload" href="{BASE}">Reload</a></p>'
    )


def _filters(counts: Mapping[str, int] | None, only: str) -> str:
    links = []
    for key, title in FILTER_TITLES:
        count = (counts or {}).get(key, 0)
        current = ' aria-current="page" class="current"' if key == only else ""
        links.append(
            f'<li><a id="filter-{h(key)}" href="{h(filter_link(key))}"{current}>{h(title)} '
            f'<span class="count">({count})</span></a></li>'
        )
    return f'<ul id="census-filters" class="filters">{"".join(links)}</ul>'


def _clients(row: AccountRow) -> str:
    shown = [f'<span class="nowrap">{h(c)}</span>' for c in row.clients]
    if row.clients_more or row.client_count > len(row.clients):
        shown.append(f'<span class="hint">… {h(row.clients_text)} addresses</span>')
    return "<br>".join(shown) or "-"


def _row(row: AccountRow) -> str:
    find = f"/helpdesk?{urlencode({'q': row.dn or row.account})}"
    account = f'<a href="{h(find)}">{h(row.account)}</a>'
    if row.dn and row.user and row.user.lower() not in row.dn.lower():
        account += f'<br><span class="hint">typed: {h(row.user)}</span>'
    ways = ", ".join(row.front_ends)
    if row.channels:
        ways += f" ({', '.join(row.channels)})"
    refused = str(row.refused)
    if row.would_refuse:
        refused += f'<br><span class="hint">{row.would_refuse} would be</span>'
    return (
        f'<tr data-account="{h(row.account)}" data-verdict="{h(row.verdict)}">'
        f'<td class="account" data-label="account">{account}</td>'
        f'<td class="verdict" data-label="verdict"><strong>{h(row.verdict)}</strong>'
        f'<br><span class="hint">{h(row.why)}</span></td>'
        f'<td data-label="binds">{row.binds}</td>'
        f'<td data-label="codes">{row.codes}</td>'
        f'<td data-label="token">{row.token_text}</td>'
        f'<td data-label="accepted">{row.accepted}</td>'
        f'<td data-label="refused">{refused}</td>'
        f'<td data-label="clients">{_clients(row)}</td>'
        f'<td data-label="ways in">{h(ways or "-")}</td>'
        f'<td data-label="policy">{h(row.policy or "-")}</td>'
        f'<td data-label="first seen">{when_html(row.first_seen)}</td>'
        f'<td data-label="last seen">{when_html(row.last_seen)}</td>'
        "</tr>"
    )


def census_table(rows: Sequence[AccountRow], total: int | None = None) -> str:
    """The first ``MAX_ROWS`` of ``rows``; ``total``: how many match in all (the scan keeps
    only the rows a view can show)."""
    if not rows:
        return '<p id="census-empty">No account matches.</p>'
    heads = (
        "account", "verdict", "binds", "codes", "token", "accepted", "refused", "clients",
        "ways in", "policy", "first seen", "last seen",
    )  # fmt: skip
    head = "".join(f'<th scope="col">{h(t)}</th>' for t in heads)
    shown = rows[:MAX_ROWS]
    more = ""
    total = max(len(rows), total or 0)
    if total > MAX_ROWS:
        more = (
            f'<p id="census-more">… and {total - MAX_ROWS} more accounts: '
            "<code>otpgate census --rotated --csv FILE</code> lists them all.</p>"
        )
    body = "".join(_row(r) for r in shown)
    return (
        '<div class="wide"><table id="census" class="census"><thead><tr>'
        f"{head}</tr></thead><tbody>{body}</tbody></table></div>{more}"
    )


def suggestion_block(text: str) -> str:
    if not text:
        return (
            '<p id="census-no-suggestion">No service account needs an exemption: none looks '
            "like a service, or each one is exempt already.</p>"
        )
    return (
        "<p>Accounts that look like services and must type a code today, as "
        "<code>[[policy.exempt]]</code> blocks to check and paste into the configuration: "
        "each is limited to the addresses it was seen from, with an end date to uncomment. "
        "A person wrongly listed here would lose the second factor: check each one.</p>"
        f'<pre id="census-suggestion">{h(text)}</pre>'
    )


def _source(snap: Snapshot, now: float, scanning: bool) -> str:
    size = sum(size for _path, size in snap.files)
    names = ", ".join(path.rsplit("/", 1)[-1] for path, _size in snap.files)
    malformed = (
        f" ({snap.malformed} lines looked like audit events but could not be read)"
        if snap.malformed
        else ""
    )
    age = max(int(now - snap.computed_at), 0)
    again = " A new scan is under way." if scanning else ""
    return (
        f'<p id="census-source">{snap.events} audit events from {len(snap.files)} file(s), '
        f"{h(_size(size))}: {h(names)}{h(malformed)}.</p>"
        f'<p id="census-computed">Computed at <span id="census-when">'
        f"{h(when(snap.computed_at))}</span> ({age} s ago, in {snap.seconds:.1f} s).{again}</p>"
    )


def census_page(snap: Snapshot, only: str, now: float, scanning: bool = False) -> str:
    """The census, filtered by ``only`` ("all" or a key of ``FILTERS``)."""
    if snap.error is not None:
        return message(snap.error) + (
            f'<p><a id="census-reload" href="{h(filter_link(only))}">Reload</a></p>'
        )
    keep = FILTERS.get(only)
    rows = [r for r in snap.rows if keep is None or keep(r)]
    total = (snap.counts or {}).get(only if only in FILTERS else "all")
    html = _source(snap, now, scanning) + _filters(snap.counts, only) + census_table(rows, total)
    if only in ("all", "service"):
        html += "<h2>Suggested exemptions</h2>" + suggestion_block(snap.suggestion)
    return html + (
        '<p class="hint" id="census-rules">Looks like a service: many binds, never a code, '
        "from at most a few fixed addresses, at a steady rate, around the clock or only at "
        "night (00:00-05:00 UTC). Person without token: holds no token (or it is not known) "
        "and never typed a code. Person ready: holds a token or typed a code. Would be "
        "refused: a report-only listener or NAS said so, or a code is required and the "
        "account holds no token.</p>"
    )
