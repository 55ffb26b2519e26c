"""HTML of the PIN parts of the portal (pure; escaped as in ``render``): the user's own PIN
on her devices page, and the help desk's PIN actions for a user.  The PIN itself is never
rendered, nor filled in again."""

from __future__ import annotations

from otpgate.directory.records import OtpState
from otpgate.web.render import Markup, csrf_field, field, h, target_field, when

_PIN_INPUT = {
    "inputmode": "numeric",
    "minlength": "4",
    "maxlength": "16",
    "pattern": "[0-9]{4,16}",
    "autocomplete": "new-password",
    "required": "",
}


def pin_state(state: OtpState) -> str:
    """"none", or when the PIN was set (from the use state's digest: no seed needed)."""
    verifier = state.used.pin
    return "none" if verifier is None else f"set {when(verifier.set_at)}"


def pin_form(csrf: str, action: str, user: str | None = None) -> str:
    """A new PIN, typed twice; ``user``: the help desk's target."""
    target = target_field(user)
    prefix = "hd-" if user is not None else ""
    return (
        f'<form method="post" action="{h(action)}" autocomplete="off">{csrf_field(csrf)}{target}'
        + field(f"{prefix}pin", "pin", "New PIN", hint="4 to 16 digits", kind="password",
                extra=_PIN_INPUT)
        + field(f"{prefix}pin2", "pin2", "The same PIN again", kind="password",
                extra=_PIN_INPUT)
        + f'<p><button id="{prefix}set-pin" type="submit">Set PIN</button></p></form>'
    )  # fmt: skip


def my_pin(state: OtpState, csrf: str) -> str:
    """The user's own PIN (after a sign-in that verified a code)."""
    clear = ""
    if state.used.pin is not None:
        clear = (
            '<form method="post" action="/pin/clear" data-confirm="Remove your PIN?">'
            f'{csrf_field(csrf)}<button id="clear-pin" type="submit">Remove PIN</button></form>'
        )
    return (
        "<h2>PIN</h2><p>Where you type only a code (some VPN and network logins), type this "
        "PIN first, then the code, with nothing in between. Some of those logins require one. "
        f'PIN: <span id="pin-state">{h(pin_state(state))}</span></p>'
        + pin_form(csrf, "/pin")
        + clear
    )


def helpdesk_pin(dn: str, state: OtpState, csrf: str, protected: bool) -> Markup:
    """A user's PIN on the help desk: set or clear it (only its state when ``protected``)."""
    shown = f'<h3>PIN</h3><p>PIN: <span id="pin-state">{h(pin_state(state))}</span></p>'
    if protected:
        return Markup(shown)
    clear = (
        '<form class="inline" method="post" action="/helpdesk/pin-clear" '
        f'data-confirm="Remove this user\'s PIN?">{csrf_field(csrf)}'
        f'<input type="hidden" name="user" value="{h(dn)}">'
        '<button type="submit" id="hd-pin-clear">Clear PIN</button></form>'
    )
    return Markup(shown + clear + pin_form(csrf, "/helpdesk/pin", dn))
