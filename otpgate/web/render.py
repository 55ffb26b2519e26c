"""HTML of the portal's pages (pure): every value is escaped here, nothing else builds HTML.

No inline script or style (the Content-Security-Policy forbids both); the QR code is an
inline SVG element (not an image URL), so no ``data:`` URI is needed either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

from otpgate.auth.suspension import status
from otpgate.directory.records import OtpState
from otpgate.tokens import Token, TokenType
from otpgate.web.render_forms import NO_FORM as NO_FORM
from otpgate.web.render_forms import FormState as FormState
from otpgate.web.render_forms import attributes as attributes
from otpgate.web.render_forms import field as field


def h(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class Markup:
    """HTML already escaped (built only by this module)."""

    html: str


def when(unix: int | float) -> str:
    if not unix:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def when_html(unix: int | float) -> str:
    """``when`` as HTML whose line breaks only between the date and the time."""
    date, _sp, rest = when(unix).partition(" ")
    if not rest:
        return h(date)
    return f'<span class="nowrap">{h(date)}</span> <span class="nowrap">{h(rest)}</span>'


def page(
    title: str,
    body: str,
    who: str | None = None,
    csrf: str | None = None,
    helpdesk: bool = False,
    apps: bool = False,
) -> bytes:
    """``apps``: the session may manage app passwords (a link to their page)."""
    nav = ""
    if who is not None and csrf is not None:
        links = '<a href="/me">My devices</a>'
        if apps:
            links += ' | <a id="nav-apps" href="/app-passwords">App passwords</a>'
        if helpdesk:
            links += ' | <a href="/helpdesk">Help desk</a>'
            links += ' | <a id="nav-inventory" href="/helpdesk/inventory">Inventory</a>'
            links += ' | <a id="nav-census" href="/helpdesk/census">Census</a>'
        nav = (
            f'<nav>{links} | signed in as <span id="who">{h(who)}</span> '
            f'<form class="inline" method="post" action="/signout">{csrf_field(csrf)}'
            '<button id="signout" type="submit">Sign out</button></form></nav>'
        )
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{h(title)} - otpgate</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/static/app.css">'
        '<script src="/static/app.js" defer></script></head><body>'
        f"<header><h1>otpgate: {h(title)}</h1>{nav}</header><main>{body}</main></body></html>\n"
    )
    return doc.encode("utf-8")


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{h(csrf)}">'


def target_field(user: str | None) -> str:
    """The help desk's target user of a form ("" on the user's own pages)."""
    return "" if user is None else f'<input type="hidden" name="user" value="{h(user)}">'


def message(text: str | None, kind: str = "error") -> str:
    if not text:
        return ""
    role = "alert" if kind == "error" else "status"
    return f'<p class="{h(kind)}" id="{h(kind)}" role="{role}">{h(text)}</p>'


def sign_in(error: str | None = None, name: str = "", send: bool = False) -> str:
    """The sign-in form; ``send``: codes can be sent by e-mail/SMS, so a second button asks
    for one instead of typing it (the first button stays the one Enter presses)."""
    hint = "leave empty for a first enrollment if allowed"
    button = ""
    if send:
        hint = "or leave it empty and have a code sent to you"
        button = (
            ' <button id="send-code" name="send" value="1" type="submit">Send me a code</button>'
        )
    # The error is about the three fields together: each names it (aria-describedby).
    about = {"aria-describedby": "error"} if error else {}
    return (
        message(error)
        + '<form method="post" action="/signin" autocomplete="off" class="stack">'
        + field(
            "username",
            "username",
            "User name",
            value=name,
            extra={**about, "required": "", "autocomplete": "username"},
        )
        + field(
            "password",
            "password",
            "Password",
            kind="password",
            extra={**about, "required": "", "autocomplete": "current-password"},
        )
        + field(
            "otp",
            "otp",
            "One-time code",
            hint=hint,
            extra={**about, "inputmode": "numeric", "autocomplete": "one-time-code"},
        )
        + f'<p><button id="signin" type="submit">Sign in</button>{button}</p></form>'
    )


CHANNEL_LABELS = {"email": "e-mail", "sms": "SMS"}


def token_kind(token: Token) -> str:
    return {
        TokenType.TOTP: "authenticator app (TOTP)",
        TokenType.HOTP: "HOTP token",
        TokenType.YUBICO: "YubiKey",
        TokenType.SCRATCH: "scratch list",
        TokenType.EMAIL: "code by e-mail",
        TokenType.SMS: "code by SMS",
    }.get(token.type, token.type.value)


def devices_table(
    state: OtpState,
    csrf: str,
    revoke_action: str,
    extra: Sequence[tuple[str, str]] = (),
    read_only: bool = False,
    destinations: Mapping[str, str] | None = None,
    now: float | None = None,
    row_actions: Mapping[str, Markup] | None = None,
    actions: Callable[[Token], str] | None = None,
) -> str:
    """``destinations``: token id -> where its codes go, masked (e-mail/SMS tokens);
    ``row_actions``: token id -> more buttons of its row (the help desk's suspend/resume);
    ``actions``: more of a row's actions (HTML from this package's renderers), before revoke.
    Each cell names its column (``data-label``): on a narrow screen a row is a card."""
    if not state.tokens:
        return '<p id="no-devices">No devices enrolled.</p>'
    now = time.time() if now is None else now
    rows = []
    hidden = "".join(f'<input type="hidden" name="{h(k)}" value="{h(v)}">' for k, v in extra)
    for t in state.tokens:
        use = state.used.use_of(t.id)
        revoke = (
            ""
            if read_only
            else f'<form method="post" action="{h(revoke_action)}" '
            'data-confirm="Revoke this device?">'
            f'{csrf_field(csrf)}{hidden}<input type="hidden" name="token" value="{h(t.id)}">'
            f'<button type="submit" id="revoke-{h(t.id)}">Revoke</button></form>'
        )
        kind = h(token_kind(t))
        to = (destinations or {}).get(t.id)
        if to:
            kind += f' to <span class="destination">{h(to)}</span>'
        desk = (row_actions or {}).get(t.id)
        more = (actions(t) if actions is not None else "") + (
            desk.html if desk is not None else ""
        )
        state_text = status(state.used, t, now)
        rows.append(
            f'<tr data-token="{h(t.id)}"><td data-label="id">{h(t.id)}</td>'
            f'<td data-label="kind">{kind}</td><td data-label="label">{h(t.label)}</td>'
            f'<td data-label="serial">{h(t.serial)}</td>'
            f'<td data-label="enrolled">{when_html(t.created)}</td>'
            f'<td data-label="last used">{when_html(use.used_at)}</td>'
            f'<td data-label="drift (steps)">{h(use.drift)}</td>'
            f'<td class="status" data-label="status">{h(state_text)}</td>'
            f'<td class="actions">{more}{revoke}</td></tr>'
        )
    return (
        '<table id="devices" class="devices"><thead><tr><th scope="col">id</th>'
        '<th scope="col">kind</th><th scope="col">label</th><th scope="col">serial</th>'
        '<th scope="col">enrolled</th><th scope="col">last used</th>'
        '<th scope="col">drift (steps)</th><th scope="col">status</th>'
        '<th scope="col"><span class="visually-hidden">'
        "actions</span></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def my_devices(
    state: OtpState,
    csrf: str,
    enroll_only: bool,
    notice: str | None = None,
    error: str | None = None,
    channels: Sequence[str] = (),
    destinations: Mapping[str, str] | None = None,
    now: float | None = None,
    hardware: str = "",
    actions: Callable[[Token], str] | None = None,
) -> str:
    """``channels``: "email"/"sms" that can send codes (an e-mail/SMS token may be added);
    ``hardware``: the section that adds an inventory token (``render_tokens``); ``actions``:
    a device's own actions besides revoke (rename, resynchronise)."""
    parts = [message(notice, "notice"), message(error)]
    if enroll_only:
        parts.append(
            '<p class="notice">You signed in with your password alone to enroll your first '
            "device. Enroll it now; then sign in again with a code.</p>"
        )
    else:
        table = devices_table(
            state, csrf, "/revoke", destinations=destinations, now=now, actions=actions
        )
        parts.append("<h2>Your devices</h2>" + table)
    parts.append(
        '<h2>Add an authenticator app</h2><form method="post" action="/enroll">'
        f'{csrf_field(csrf)}<label for="label">Name of the device</label>'
        '<input type="text" id="label" name="label" maxlength="64" value="phone">'
        '<p><button id="enroll" type="submit">Enroll an authenticator app</button></p></form>'
    )
    parts.append(hardware)
    if not enroll_only:
        parts.append(
            "<h2>Scratch codes</h2><p>A printed list of one-time codes for when your phone "
            "is not at hand. A new list replaces the old one.</p>"
            f'<form method="post" action="/scratch">{csrf_field(csrf)}'
            '<button id="scratch" type="submit">Print a new scratch list</button></form>'
        )
        if channels:
            parts.append(
                "<h2>Codes by e-mail or SMS</h2><p>Have a code sent to the address or number "
                "the directory holds for you when you sign in. It is added once you type back "
                "the code sent to it; a new one replaces the old one of the same kind.</p>"
                + sent_buttons(csrf, "/enroll-sent", "enroll", channels)
            )
    return "".join(parts)


def sent_buttons(
    csrf: str, action: str, prefix: str, channels: Sequence[str], user: str | None = None
) -> str:
    """One form, a button per channel (``kind``), to start enrolling an e-mail/SMS token."""
    target = target_field(user)
    buttons = " ".join(
        f'<button type="submit" name="kind" value="{h(c)}" id="{h(prefix)}-{h(c)}">'
        f"Add {h(CHANNEL_LABELS.get(c, c))} token</button>"
        for c in channels
    )
    return (
        f'<form class="inline" method="post" action="{h(action)}">{csrf_field(csrf)}'
        f"{target}{buttons}</form>"
    )


def enroll(svg: str, secret_b32: str, csrf: str, error: str | None = None) -> str:
    grouped = " ".join(secret_b32[i : i + 4] for i in range(0, len(secret_b32), 4))
    return (
        message(error) + "<p>Scan this code with your authenticator app, or type the key by hand. "
        "It is shown only this once.</p>"
        f'<div class="qr" id="qr">{svg}</div>'
        f'<p>Key: <span class="secret" id="secret">{h(grouped)}</span></p>' + confirm_form(csrf)
    )


def confirm_form(csrf: str, error: str | None = None) -> str:
    """``error``: shown at the top (``#error``) and named by the code field."""
    about = {"aria-describedby": "error", "aria-invalid": "true"} if error else {}
    return (
        message(error)
        + '<form method="post" action="/enroll/confirm" autocomplete="off">'
        + csrf_field(csrf)
        + field(
            "code",
            "code",
            "Code shown by the app",
            extra={**about, "inputmode": "numeric", "required": ""},
        )
        + '<p><button id="confirm" type="submit">Activate</button></p></form>'
        '<form method="post" action="/enroll/cancel">'
        f'{csrf_field(csrf)}<button type="submit">Cancel</button></form>'
    )


def scratch_codes(codes: Iterable[str], who: str) -> str:
    items = "".join(f"<li>{h(c)}</li>" for c in codes)
    return (
        f"<p>Scratch codes for {h(who)}. Print them now: they are shown only once. "
        "Each works once, in place of a code from your app.</p>"
        f'<ol class="codes" id="codes">{items}</ol><p><a href="/me">Done</a></p>'
    )


def helpdesk(
    csrf: str, query: str, found: Markup | None, notice: str | None = None, error: str | None = None
) -> str:
    return (
        message(notice, "notice")
        + message(error)
        + '<form method="get" action="/helpdesk" role="search" class="stack">'
        + field(
            "q",
            "q",
            "Find a user",
            value=query,
            hint="The start of a login name, e-mail/UPN or name, or an exact DN.",
            extra={"autocomplete": "off", "spellcheck": "false"},
        )
        + '<button id="search" type="submit">Find</button></form>'
        + (found.html if found is not None else "")
    )


def matches(found: Sequence[tuple[str, ...]]) -> Markup:
    """Users found by a search: (DN, login name[, UPN/mail[, display name]]), each a link to
    its help-desk page (GET: no secret in it), with the name, UPN and DN beside it."""
    if not found:
        return Markup('<p id="matches">No user matches.</p>')
    items = []
    for dn, login, *more in found:
        upn = more[0] if more else ""
        name = more[1] if len(more) > 1 else ""
        details = "".join(
            f'<span class="{cls}"><span class="visually-hidden">{what}: </span>{h(text)}</span>'
            for cls, what, text in (("match-name", "name", name), ("match-upn", "UPN", upn))
            if text and text != login
        )
        items.append(
            f'<li><a href="/helpdesk?{h(urlencode({"q": dn}))}">{h(login or dn)}</a>{details}'
            f'<span class="match-dn"><span class="visually-hidden">DN: </span>{h(dn)}</span></li>'
        )
    count = f"{len(found)} user{'s' if len(found) != 1 else ''} match"
    return Markup(
        f'<p class="hint" id="matches-count">{h(count)}: pick one.</p>'
        f'<ul id="matches" class="matches" aria-describedby="matches-count">{"".join(items)}</ul>'
    )


def helpdesk_user(
    dn: str,
    state: OtpState,
    csrf: str,
    now: float,
    inventory: bool,
    protected: str | None = None,
    mail: bool = False,
    channels: Sequence[str] = (),
    destinations: Mapping[str, str] | None = None,
    suspension: Markup | None = None,
    row_actions: Mapping[str, Markup] | None = None,
) -> Markup:
    """A user's devices and lockout, with the help-desk actions unless ``protected`` says why
    the help desk may not change this user (the server refuses them anyway); ``mail``: e-mail
    servers are configured, so a new list may be sent to the user's own address;
    ``channels``: an e-mail/SMS token may be added (the user reads the code back);
    ``suspension``: the user's suspension and its buttons, ``row_actions`` each device's
    (``render_suspend``)."""
    used = state.used
    locked = used.locked_until > now
    lock = (
        f'<span id="lock">locked until {h(when(used.locked_until))}</span>'
        if locked
        else f'<span id="lock">not locked ({h(used.failures)} recent failures)</span>'
    )

    def action(name: str, label: str, confirm: str = "", extra: str = "") -> str:
        ask = f' data-confirm="{h(confirm)}"' if confirm else ""
        return (
            f'<form class="inline" method="post" action="/helpdesk/{h(name)}"{ask}>'
            f'{csrf_field(csrf)}<input type="hidden" name="user" value="{h(dn)}">{extra}'
            f'<button type="submit" id="hd-{h(name)}">{h(label)}</button></form> '
        )

    assign = ""
    if inventory:
        assign = action(
            "assign",
            "Assign hardware token",
            extra='<label for="serial">Serial</label>'
            '<input type="text" id="serial" name="serial" maxlength="64">',
        )
    if protected is not None:
        return Markup(
            f'<h2 id="user-dn">{h(dn)}</h2><p>Lockout: {lock}</p>'
            f'<p class="notice" id="protected">This user is {h(protected)}: the help desk '
            "cannot change their devices. Ask a directory administrator (otpgate CLI).</p>"
            + (suspension.html if suspension is not None else "")
            + devices_table(state, csrf, "", read_only=True, destinations=destinations, now=now)
        )
    html = (
        f'<h2 id="user-dn">{h(dn)}</h2><p>Lockout: {lock}</p>'
        + (suspension.html if suspension is not None else "")
        + devices_table(
            state,
            csrf,
            "/helpdesk/revoke",
            (("user", dn),),
            False,
            destinations,
            now,
            row_actions,
        )
        + "<p>"
        + action("unlock", "Unlock")
        + action("reset", "Reset all devices", "Remove every device of this user?")
        + action("scratch", "Issue a scratch list")
        + (
            action(
                "scratch-mail",
                "Send a new list by e-mail",
                "Send a new scratch list to the user's own e-mail address? The previous "
                "list stops working.",
            )
            if mail
            else ""
        )
        + "</p>"
        + assign
    )
    if channels:
        html += "<p>" + sent_buttons(csrf, "/helpdesk/enroll-sent", "hd-enroll", channels, dn)
        html += " (a code is sent to the user, who reads it back to you)</p>"
    return Markup(html)
