"""HTML of the help desk's import pages (pure; escaped as in ``render``): the dry run (what
would be imported, each problem row explained) and what the import did."""

from __future__ import annotations

from collections.abc import Sequence

from otpgate.admin.imports import Assignment
from otpgate.importers import ImportResult
from otpgate.importers.formats import FORMAT_NAMES
from otpgate.web.render import csrf_field, h, message
from otpgate.web.render_inventory import BASE, token_link

MAX_GOOD_ROWS_SHOWN = 500
"""Rows without a problem listed on the dry-run page (every problem row is always shown)."""


def _where(kind: str, row: int) -> str:
    return f"KeyPackage {row}" if kind == "xml" else f"line {row}"


def _button(csrf: str, action: str, ident: str, text: str, extra: str = "") -> str:
    return (
        f'<form class="inline" method="post" action="{BASE}/import/{action}">'
        f'{csrf_field(csrf)}{extra}<button id="{h(ident)}" type="submit">{h(text)}</button>'
        "</form> "
    )


def rows_table(result: ImportResult) -> str:
    problems: dict[int, list[str]] = {}
    for p in result.problems:
        problems.setdefault(p.row, []).append(p.message)
    lines: list[tuple[int, str]] = []
    for row, messages in problems.items():
        text = "; ".join(messages)
        lines.append(
            (
                row,
                f'<tr class="problem" data-row="{row}"><td>{h(_where(result.kind, row))}</td>'
                f'<td colspan="4"></td><td class="why">{h(text)}</td></tr>',
            )
        )
    for shown, t in enumerate(result.tokens):
        if shown >= MAX_GOOD_ROWS_SHOWN:
            break
        lines.append(
            (
                t.row,
                f'<tr class="good" data-row="{t.row}"><td>{h(_where(result.kind, t.row))}</td>'
                f"<td>{h(t.serial)}</td><td>{h(t.token.type.value)}</td>"
                f"<td>{h(t.token.label or '-')}</td><td>{h(t.user or '-')}</td><td>OK</td></tr>",
            )
        )
    hidden = len(result.tokens) - MAX_GOOD_ROWS_SHOWN
    tail = f"<p>… and {hidden} more rows without a problem.</p>" if hidden > 0 else ""
    body = "".join(html for _row, html in sorted(lines))
    return (
        '<table id="rows"><tr><th>row</th><th>serial</th><th>type</th><th>label</th>'
        f"<th>assign to</th><th>result</th></tr>{body}</table>{tail}"
    )


def dry_run(
    csrf: str, filename: str, kind: str, result: ImportResult, error_name: str, error: str = ""
) -> str:
    """What the file holds and what importing it would do; nothing is imported yet."""
    good = len(result.tokens)
    bad = len({p.row for p in result.problems})
    summary = (
        f"{FORMAT_NAMES.get(kind, kind)} file {filename}: {result.rows} row(s); {good} would be "
        f"imported" + (f", {bad} have a problem" if bad else "") + "."
    )
    html = message(error) + f'<p id="summary">{h(summary)}</p>'
    actions = ""
    if bad:
        html += (
            '<p class="error" id="problems">Rows with a problem are not imported. Fix them in '
            f"{h(error_name)} (the file as uploaded, with each problem marked before its row; "
            "the marks are comments) and upload it again, or import the good rows only.</p>"
        )
        actions += _button(csrf, "error", "download-error", f"Download {error_name}")
        if good:
            actions += _button(
                csrf,
                "confirm",
                "import-good",
                f"Import the {good} good row(s) only",
                '<input type="hidden" name="partial" value="1">',
            )
    elif good:
        actions += _button(csrf, "confirm", "import", f"Import {good} token(s)")
    actions += _button(csrf, "cancel", "import-cancel", "Cancel")
    return html + f"<p>{actions}</p>" + rows_table(result)


def done(
    csrf: str,
    imported: Sequence[str],
    assigned: Sequence[Assignment],
    result: ImportResult,
    error_name: str,
    inventory_dn: str,
) -> str:
    """What the import did: the tokens imported, assigned, and rows left out."""
    html = message(
        f"Imported {len(imported)} token(s) into {inventory_dn}.", "notice"
    ) + '<ul id="imported">' + "".join(
        f'<li><a href="{h(token_link(s))}">{h(s)}</a></li>' for s in imported
    ) + "</ul>"
    ok = [a for a in assigned if a.token is not None]
    failed = [a for a in assigned if a.token is None]
    if ok:
        html += '<h2>Assigned</h2><ul id="assigned-rows">' + "".join(
            f"<li>{h(a.serial)} to {h(a.user)} (token {h(a.token.id if a.token else '')})</li>"
            for a in ok
        ) + "</ul>"
    if failed:
        html += (
            '<h2>Not assigned (kept in the inventory)</h2><ul class="error" id="not-assigned">'
            + "".join(f"<li>{h(a.serial)} to {h(a.user)}: {h(a.error)}</li>" for a in failed)
            + "</ul>"
        )
    if result.problems:
        html += (
            f'<p class="error" id="skipped">{len({p.row for p in result.problems})} row(s) '
            "were not imported.</p>"
            + rows_table(result)
            + _button(csrf, "error", "download-error", f"Download {error_name}")
        )
    return html + _button(csrf, "cancel", "import-close", "Done")
