"""HTML of the portal's app-password pages (pure; escaped as in ``render``): the user's own
page (create form, list, revoke), the secret shown once after a create, and the help desk's
listing of a user's app passwords.

Places are shown as people know them: an LDAP listener by its ``listener_rules`` name where
it has one (else its listen string), a RADIUS client by its name.  The secret appears in
one page only, the answer to the create form; it is never a value of a field, a URL or
the list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otpgate.auth.appconfig import AppPasswordConfig
from otpgate.web.render import Markup, csrf_field, field, h, message, target_field, when, when_html
from otpgate.web.render_forms import NO_FORM, FormState

PAGE = "/app-passwords"
MAX_NETWORKS_TEXT = 1000


@dataclass(frozen=True)
class Places:
    """The places the admin lets app passwords work, with the names shown for them."""

    listeners: tuple[tuple[str, str], ...] = ()
    """(listen string, shown name)"""
    nas: tuple[str, ...] = ()

    def shown(self, front_end: str, where: str) -> str:
        if front_end == "ldap":
            return dict(self.listeners).get(where, where)
        return where

    def where_text(self, where: str) -> str:
        """A last use's place (a listen string or a NAS name) as shown."""
        names = dict(self.listeners)
        if where in names:
            return f"LDAP {names[where]}"
        return f"RADIUS {where}" if where in self.nas else where


def places_of(config: AppPasswordConfig, names: Mapping[str, str]) -> Places:
    """``names``: the ``[ldap_proxy] listener_rules`` names of listeners (shown for them)."""
    return Places(tuple((w, names.get(w) or w) for w in config.listeners), config.nas)


def scope_text(row: Mapping[str, Any], places: Places) -> str:
    """An app password's scope (a ``listing`` row) with the places' shown names."""
    parts = [f"LDAP {places.shown('ldap', w)}" for w in row.get("ldap", ())]
    parts += [f"RADIUS {n}" for n in row.get("radius", ())]
    if row.get("nets"):
        parts.append("from " + ", ".join(row["nets"]))
    return "; ".join(parts)


def _last_use(row: Mapping[str, Any], places: Places) -> str:
    if not row.get("last_used"):
        return "never"
    where = places.where_text(str(row.get("last_where") or ""))
    client = str(row.get("last_from") or "")
    return f'{when_html(row["last_used"])} <span class="app-where">{h(where)}</span>' + (
        f' <span class="app-from">from {h(client)}</span>' if client else ""
    )


def _revoke(action: str, csrf: str, ident: str, user: str | None, button_id: str) -> str:
    target = target_field(user)
    return (
        f'<form class="inline" method="post" action="{h(action)}" '
        'data-confirm="Revoke this app password? Applications using it stop working.">'
        f'{csrf_field(csrf)}{target}<input type="hidden" name="token" value="{h(ident)}">'
        f'<button type="submit" id="{h(button_id)}">Revoke</button></form>'
    )


def apps_table(
    rows: Sequence[Mapping[str, Any]],
    places: Places,
    csrf: str,
    revoke_action: str | None,
    user: str | None = None,
) -> str:
    """The app passwords (``admin.apppasswords.listing`` rows: never a hash), one row each
    with its revoke button unless ``revoke_action`` is None (read only)."""
    if not rows:
        return '<p id="no-apps">No app passwords.</p>'
    out = []
    prefix = "hd-" if user is not None else ""
    for row in rows:
        ident = str(row["id"])
        expires = when(row["exp"]) if row.get("exp") else "never"
        if row.get("expired"):
            expires += " (expired)"
        action = (
            ""
            if revoke_action is None
            else _revoke(revoke_action, csrf, ident, user, f"{prefix}app-revoke-{ident}")
        )
        out.append(
            f'<tr data-app="{h(ident)}"><td data-label="name" class="app-name">{h(row["name"])}'
            f'</td><td data-label="where">{h(scope_text(row, places))}</td>'
            f'<td data-label="created">{when_html(row["created"])}</td>'
            f'<td data-label="expires">{h(expires)}</td>'
            f'<td data-label="last used" class="app-last">{_last_use(row, places)}</td>'
            f'<td class="actions">{action}</td></tr>'
        )
    return (
        f'<table id="{prefix}apps" class="devices"><thead><tr><th scope="col">name</th>'
        '<th scope="col">where it works</th><th scope="col">created</th>'
        '<th scope="col">expires</th><th scope="col">last used</th>'
        '<th scope="col"><span class="visually-hidden">actions</span></th></tr></thead>'
        "<tbody>" + "".join(out) + "</tbody></table>"
    )


def revoke_all(action: str, csrf: str, user: str | None = None, button_id: str = "") -> str:
    target = target_field(user)
    return (
        f'<form method="post" action="{h(action)}" '
        'data-confirm="Revoke every app password? Every application using one stops working.">'
        f"{csrf_field(csrf)}{target}"
        f'<button type="submit" id="{h(button_id)}">Revoke all app passwords</button></form>'
    )


def _checkbox(ident: str, name: str, value: str, label: str, checked: bool) -> str:
    on = " checked" if checked else ""
    return (
        f'<div class="check"><input type="checkbox" id="{h(ident)}" name="{h(name)}" '
        f'value="{h(value)}"{on}><label for="{h(ident)}">{h(label)}</label></div>'
    )


def create_form(csrf: str, places: Places, form: FormState = NO_FORM) -> str:
    """Name, the places (a checkbox each: ``ldap-N`` / ``nas-N`` carry the place itself),
    optional source networks and end date."""
    boxes = [
        _checkbox(f"app-ldap-{i}", f"ldap-{i}", listen, f"LDAP: {shown}",
                  form.value(f"ldap-{i}") == listen)
        for i, (listen, shown) in enumerate(places.listeners)
    ] + [
        _checkbox(f"app-nas-{i}", f"nas-{i}", nas, f"RADIUS (Wi-Fi, VPN): {nas}",
                  form.value(f"nas-{i}") == nas)
        for i, nas in enumerate(places.nas)
    ]  # fmt: skip
    where_error = form.error("app-where")
    where = (
        '<fieldset id="app-where"><legend>Where it works</legend>'
        + "".join(boxes)
        + (f'<p class="field-error" id="app-where-error">{h(where_error)}</p>' if where_error
           else "")
        + "</fieldset>"
    )  # fmt: skip
    return (
        '<h2>New app password</h2><form method="post" action="/app-passwords/create" '
        f'autocomplete="off" class="stack" id="app-create">{csrf_field(csrf)}'
        + field("app-name", "name", "Name", value=form.value("app-name"),
                error=form.error("app-name"),
                hint="The application or device, e.g. \"mail on my laptop\"",
                extra={"maxlength": "64", "required": ""})
        + where
        + field("app-networks", "networks", "Only from these networks (optional)",
                value=form.value("app-networks"), error=form.error("app-networks"),
                hint="Comma separated, e.g. 192.0.2.0/24, 2001:db8::/32",
                extra={"maxlength": str(MAX_NETWORKS_TEXT)})
        + field("app-expires", "expires", "Works until (optional)", kind="date",
                value=form.value("app-expires"), error=form.error("app-expires"),
                hint="The last day it works (UTC); empty: until revoked")
        + '<p><button type="submit" id="app-create-button">Create app password</button></p>'
        "</form>"
    )  # fmt: skip


def my_apps(
    rows: Sequence[Mapping[str, Any]],
    places: Places,
    csrf: str,
    notice: str | None = None,
    error: str | None = None,
    form: FormState = NO_FORM,
) -> str:
    """The user's own page: what app passwords are, the list, the create form."""
    listed = apps_table(rows, places, csrf, "/app-passwords/revoke")
    if rows:
        listed += revoke_all("/app-passwords/revoke-all", csrf, button_id="app-revoke-all")
    return (
        message(notice, "notice")
        + message(error)
        + "<p>An app password is for an application that cannot ask for a one-time code "
        "(mail, calendar, Wi-Fi). It replaces your password and code, only where you let it "
        "work. Make one per application, and revoke it when you no longer use it.</p>"
        + "<h2>Your app passwords</h2>"
        + listed
        + create_form(csrf, places, form)
    )


def created(secret: str, name: str, scope: str) -> str:
    """The new app password, shown this once: large, in its groups, with a copy button
    (``app.js``; without script it is selected and copied by hand)."""
    groups = secret.split("-")
    shown = '<span class="dash">-</span>'.join(f"<span>{h(g)}</span>" for g in groups)
    return (
        f'<p class="notice" id="notice" role="status">App password "{h(name)}" created: '
        f"it works for {h(scope)}.</p>"
        '<p class="error" id="app-warning">Copy it into the application now. It will not be '
        "shown again: if you lose it, revoke it and make a new one.</p>"
        f'<p><code class="app-secret" id="app-secret">{shown}</code></p>'
        '<p><button type="button" id="app-copy" data-copy="app-secret" hidden>Copy</button> '
        '<span id="app-copied" class="hint" role="status"></span></p>'
        "<p>Type it where the application asks for your password, with its dashes (capitals "
        'or not).</p><p><a id="app-done" href="/app-passwords">Done</a></p>'
    )


def helpdesk_apps(
    dn: str,
    rows: Sequence[Mapping[str, Any]],
    places: Places,
    csrf: str,
    read_only: bool,
) -> Markup:
    """A user's app passwords on the help desk, with revoke one / revoke all."""
    action = None if read_only else "/helpdesk/app-passwords/revoke"
    html = "<h3>App passwords</h3>" + apps_table(rows, places, csrf, action, dn)
    if rows and not read_only:
        html += revoke_all(
            "/helpdesk/app-passwords/revoke-all", csrf, dn, button_id="hd-app-revoke-all"
        )
    return Markup(html)
