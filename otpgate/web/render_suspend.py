"""HTML of the help desk's suspend, resume and lost-device controls (pure; escaped as in
``render``): a line and buttons for all of the user's OTP, and buttons per device."""

from __future__ import annotations

from urllib.parse import urlencode

from otpgate.admin.suspend import MAX_SUSPEND_DAYS, MAX_TEMPORARY_DAYS, describe
from otpgate.auth.suspension import user_suspension
from otpgate.directory.records import OtpState
from otpgate.web.render import Markup, csrf_field, h

LOST_DAYS = 7
"""What the lost-device form proposes."""


def _form(
    action: str, dn: str, csrf: str, label: str, button_id: str, fields: str = "",
    confirm: str = "",
) -> str:  # fmt: skip
    ask = f' data-confirm="{h(confirm)}"' if confirm else ""
    return (
        f'<form class="inline" method="post" action="/helpdesk/{h(action)}"{ask}>'
        f'{csrf_field(csrf)}<input type="hidden" name="user" value="{h(dn)}">{fields}'
        f'<button type="submit" id="{h(button_id)}">{h(label)}</button></form> '
    )


def _days(input_id: str, maximum: int, value: str = "", placeholder: str = "") -> str:
    hint = f' placeholder="{h(placeholder)}"' if placeholder else ""
    return (
        f'<input type="number" class="days" id="{h(input_id)}" name="days" min="1" '
        f'max="{maximum}" value="{h(value)}"{hint} aria-label="days"> '
    )


def user_suspension_block(
    dn: str, state: OtpState, csrf: str, now: float, read_only: bool = False
) -> Markup:
    """All of the user's OTP: suspended (since, until) with "Resume", or "Suspend all"."""
    held = user_suspension(state.used, now)
    if held is not None:
        text = f"All OTP of this user is {describe(held)}: every code is refused."
        resume = "" if read_only else _form("resume", dn, csrf, "Resume all", "hd-resume-all")
        return Markup(f'<p class="error" id="suspension">{h(text)} {resume}</p>')
    if read_only:
        return Markup('<p id="suspension">OTP not suspended.</p>')
    fields = _days("suspend-days", MAX_SUSPEND_DAYS, placeholder="days (empty: until resumed)")
    suspend = _form(
        "suspend", dn, csrf, "Suspend all OTP", "hd-suspend-all", fields,
        "Suspend every device of this user? No code will work until resumed.",
    )  # fmt: skip
    return Markup(f'<p id="suspension">OTP not suspended. {suspend}</p>')


def device_actions(dn: str, state: OtpState, csrf: str, now: float) -> dict[str, Markup]:
    """Per device: "Resume" for a suspended one; else "Suspend" (optionally for some days)
    and, for a device (not a temporary list), "Lost" (suspend it and show a temporary list
    valid some days)."""
    actions: dict[str, Markup] = {}
    for t in state.tokens:
        token = f'<input type="hidden" name="token" value="{h(t.id)}">'
        held = state.used.suspensions.get(t.id)
        if held is not None and held.active(now):
            actions[t.id] = Markup(
                _form("resume", dn, csrf, "Resume", f"hd-resume-{t.id}", token)
            )
            continue
        fields = token + _days(f"suspend-days-{t.id}", MAX_SUSPEND_DAYS, placeholder="days")
        html = _form("suspend", dn, csrf, "Suspend", f"hd-suspend-{t.id}", fields)
        if not t.expires:
            fields = token + _days(f"lost-days-{t.id}", MAX_TEMPORARY_DAYS, str(LOST_DAYS))
            html += _form(
                "lost", dn, csrf, "Lost: temporary list", f"hd-lost-{t.id}", fields,
                "Suspend this device until it is resumed, and show a temporary list?",
            )  # fmt: skip
        actions[t.id] = Markup(html)
    return actions


def temporary_codes(codes: list[str], who: str, dn: str, lost: str, until: str) -> str:
    """The temporary list, shown once to the help desk to hand over."""
    items = "".join(f"<li>{h(c)}</li>" for c in codes)
    back = "/helpdesk?" + urlencode({"q": dn})
    return (
        f'<p class="notice" id="lost-notice">Device {h(lost)} of {h(who)} is suspended until '
        f"it is resumed. Temporary codes for {h(who)}, valid until {h(until)}: they are shown "
        "only once. Each works once, in place of a code from the lost device.</p>"
        f'<ol class="codes" id="codes">{items}</ol>'
        f'<p><a href="{h(back)}">Back to the user</a></p>'
    )
