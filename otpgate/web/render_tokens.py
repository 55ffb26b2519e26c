"""HTML of the self-service pages for hardware tokens and device names (pure; escaped as in
``render``): add an inventory token by its serial, resynchronise an HOTP token, rename a
device.  Every input has a label; a field's error stands right after it and is named by the
input's ``aria-describedby``; codes are never put back into a form."""

from __future__ import annotations

from otpgate.admin.claim import HOTP_CODES, ClaimKind
from otpgate.admin.manage import MAX_LABEL
from otpgate.tokens import Token, TokenType
from otpgate.web.render import NO_FORM, FormState, attributes, csrf_field, field, h

CLAIM_FIELDS = ("claim-serial", "claim-kind", *(f"claim-code{i}" for i in (1, 2, 3)))
KIND_CHOICES = (
    (ClaimKind.HOTP, "A token with a button: each press shows a new code (HOTP)"),
    (ClaimKind.TOTP, "A token that shows a new code every 30 or 60 seconds (TOTP)"),
    (ClaimKind.YUBICO, "A YubiKey: touch it and it types a long code (Yubico OTP)"),
)
CODE_EXTRA = {"inputmode": "numeric", "autocomplete": "off", "maxlength": "64"}


def claim_form(csrf: str, form: FormState = NO_FORM) -> str:
    """The section that adds a hardware token from the inventory (``/claim``)."""
    chosen = form.value("claim-kind", ClaimKind.HOTP.value)
    radios = "".join(
        '<div class="choice">'
        f"<input{attributes(_radio(kind, chosen))}>"
        f'<label for="claim-kind-{h(kind.value)}">{h(text)}</label></div>'
        for kind, text in KIND_CHOICES
    )
    kind_error = form.error("claim-kind")
    kind_html = (
        '<fieldset class="field choices" id="claim-kind"'
        + (' aria-describedby="claim-kind-error"' if kind_error else "")
        + "><legend>Kind of token</legend>"
        + radios
        + (
            f'<p class="field-error" id="claim-kind-error">{h(kind_error)}</p>'
            if kind_error
            else ""
        )
        + "</fieldset>"
    )
    codes = [
        field(
            "claim-code1",
            "code1",
            "Code",
            error=form.error("claim-code1"),
            hint="HOTP: press the button and type the code, then press again for the next "
            "two. TOTP: the code shown now. YubiKey: click here and touch the key.",
            extra=CODE_EXTRA,
        ),
        field(
            "claim-code2",
            "code2",
            "Second code (HOTP)",
            error=form.error("claim-code2"),
            extra={**CODE_EXTRA, "data-kinds": "hotp"},
            css="hotp-only",
        ),
        field(
            "claim-code3",
            "code3",
            "Third code (HOTP)",
            error=form.error("claim-code3"),
            extra={**CODE_EXTRA, "data-kinds": "hotp"},
            css="hotp-only",
        ),
    ]
    return (
        '<section class="card" aria-labelledby="hardware-title">'
        '<h2 id="hardware-title">Add a hardware token</h2>'
        "<p>Received a key fob, a token with a display or a YubiKey? Add it yourself: type "
        "its serial number and prove that you hold it with its codes. The codes you type "
        "here are used up: sign in with the ones that follow.</p>"
        '<form method="post" action="/claim" autocomplete="off" class="stack" id="claim-form">'
        + csrf_field(csrf)
        + field(
            "claim-serial",
            "serial",
            "Serial number",
            value=form.value("claim-serial"),
            error=form.error("claim-serial"),
            hint="Printed on the token, usually on the back.",
            extra={"maxlength": "64", "autocapitalize": "none", "spellcheck": "false"},
        )
        + kind_html
        + "".join(codes)
        + '<p><button id="claim" type="submit">Add the token</button></p></form></section>'
    )


def _radio(kind: ClaimKind, chosen: str) -> dict[str, str]:
    attrs = {
        "type": "radio",
        "name": "kind",
        "id": f"claim-kind-{kind.value}",
        "value": kind.value,
        "data-codes": str(kind.codes),
    }
    if kind.value == chosen:
        attrs["checked"] = ""
    return attrs


def rename_ids(token: Token) -> str:
    return f"label-{token.id}"


def resync_ids(token: Token) -> tuple[str, ...]:
    return tuple(f"resync-{token.id}-{i}" for i in range(1, HOTP_CODES + 1))


def device_actions(token: Token, csrf: str, form: FormState = NO_FORM) -> str:
    """A device's own actions in the devices table: rename it; resynchronise an HOTP token
    (three consecutive codes).  Each is a disclosure (``<details>``), open when its form
    came back with an error."""
    hidden = f'{csrf_field(csrf)}<input type="hidden" name="token" value="{h(token.id)}">'
    label_id = rename_ids(token)
    rename = (
        f'<details class="device-action"{_open(form, label_id)}><summary>Rename</summary>'
        f'<form method="post" action="/rename" class="stack">{hidden}'
        + field(
            label_id,
            "label",
            "New name",
            value=form.value(label_id, token.label),
            error=form.error(label_id),
            extra={"maxlength": str(MAX_LABEL), "required": ""},
        )
        + f'<button type="submit" id="rename-{h(token.id)}">Save the name</button></form>'
        "</details>"
    )
    if token.type is not TokenType.HOTP:
        return rename
    ids = resync_ids(token)
    names = ("First code", "Second code", "Third code")
    fields = "".join(
        field(i, f"code{n}", name, error=form.error(i), extra=CODE_EXTRA)
        for n, (i, name) in enumerate(zip(ids, names, strict=True), start=1)
    )
    resync = (
        f'<details class="device-action"{_open(form, *ids)}><summary>Resynchronise</summary>'
        '<p class="hint">Codes not accepted after many presses away from the computer? Press '
        "the button three times and type the three codes in order.</p>"
        f'<form method="post" action="/resync" class="stack" autocomplete="off">{hidden}{fields}'
        f'<button type="submit" id="resync-{h(token.id)}">Resynchronise</button></form>'
        "</details>"
    )
    return rename + resync


def _open(form: FormState, *idents: str) -> str:
    return " open" if form.any_error(*idents) else ""
