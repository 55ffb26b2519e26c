"""HTML of the portal's pages for codes sent by e-mail/SMS (pure; escaped as in ``render``):
the second step of a sign-in, and the proof that enrolls an e-mail/SMS token."""

from __future__ import annotations

from otpgate.web.render import csrf_field, h, message


def code_step(
    challenge: str, csrf: str, notice: str | None = None, error: str | None = None
) -> str:
    """The code form of a sign-in whose code was sent, with "send again" and "cancel"."""
    return (
        message(notice, "notice")
        + message(error)
        + f'<p id="challenge">{h(challenge)}.</p>'
        + '<form method="post" action="/signin/code" autocomplete="off">'
        f'{csrf_field(csrf)}<label for="code">Code</label>'
        '<input type="text" id="code" name="code" inputmode="numeric" '
        'autocomplete="one-time-code" required>'
        '<p><button id="verify" type="submit">Sign in</button></p></form>'
        "<p>No code arrived? Ask for another one, or start over.</p>"
        '<form class="inline" method="post" action="/signin/resend">'
        f'{csrf_field(csrf)}<button id="resend" type="submit">Send again</button></form> '
        '<form class="inline" method="post" action="/signin/cancel">'
        f'{csrf_field(csrf)}<button id="cancel-code" type="submit">Cancel</button></form>'
    )


def sent_proof(
    destination: str,
    csrf: str,
    base: str,
    helpdesk_user: str | None = None,
    error: str | None = None,
) -> str:
    """The form that takes back the code sent to a new e-mail/SMS token's destination:
    typed by the user (self-service), or by the help desk as the user reads it out.
    ``base``: the flow's path ("/enroll-sent"); the forms post to its /confirm, /cancel."""
    if helpdesk_user is None:
        told = f"Code sent to {destination}. Type it here to add this device."
        label = "Code you received"
    else:
        told = (
            f"Code sent to {destination}. Ask {helpdesk_user} to read it to you; never "
            "ask for a code the user did not receive from this page."
        )
        label = "Code the user reads to you"
    return (
        message(error)
        + f'<p id="sent-to">{h(told)}</p>'
        + f'<form method="post" action="{h(base)}/confirm" autocomplete="off">{csrf_field(csrf)}'
        f'<label for="sent-code">{h(label)}</label>'
        '<input type="text" id="sent-code" name="code" inputmode="numeric" required>'
        '<p><button id="sent-confirm" type="submit">Activate</button></p></form>'
        f'<form method="post" action="{h(base)}/cancel">'
        f'{csrf_field(csrf)}<button id="sent-cancel" type="submit">Cancel</button></form>'
    )


def moved_confirm(warning: str, kind: str, user: str, csrf: str) -> str:
    """The help desk's stop before re-enrolling a token whose destination changed: the
    warning, and the same request again with the agent's confirmation that the caller was
    verified by other means."""
    return (
        message(warning)
        + '<form method="post" action="/helpdesk/enroll-sent">'
        f'{csrf_field(csrf)}<input type="hidden" name="user" value="{h(user)}">'
        f'<input type="hidden" name="kind" value="{h(kind)}">'
        '<p><input type="checkbox" id="verified" name="verified" value="yes" required> '
        '<label for="verified">I verified the caller by other means</label></p>'
        '<p><button id="send-verified" type="submit">Send the code</button></p></form>'
    )
