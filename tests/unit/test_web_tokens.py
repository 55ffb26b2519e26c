"""The HTML of the hardware-token, resync and rename forms and of the help desk's matches
(pure): a label for every input, each error right after its field and named by the field's
aria-describedby, values escaped, codes never written back into a page, no inline style or
script (the CSP forbids them)."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from otpgate.directory.records import OtpState
from otpgate.tokens import Token, TokenType
from otpgate.web import render, render_tokens
from otpgate.web.render import FormState


class Page(HTMLParser):
    """Inputs, labels, elements by id, and each element's successor (document order)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.inputs: list[dict[str, str]] = []
        self.labels: set[str] = set()
        self.ids: dict[str, str] = {}
        self.order: list[str] = []
        self.styles = 0
        self.scripts = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Any]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "style" in a or tag == "style":
            self.styles += 1
        if tag == "script" or any(k.startswith("on") for k in a):
            self.scripts += 1
        if tag == "input":
            self.inputs.append(a)
        if tag == "label" and "for" in a:
            self.labels.add(a["for"])
        if "id" in a:
            assert a["id"] not in self.ids, f"duplicate id {a['id']}"
            self.ids[a["id"]] = tag
            self.order.append(a["id"])


def devices_page(form: FormState = render.NO_FORM) -> str:
    hotp = Token(id="h1", type=TokenType.HOTP, created=0, label="<b>fob</b>", serial="SN<1>")
    app = Token(id="t1", type=TokenType.TOTP, created=0, label="phone")
    state = OtpState(tokens=(hotp, app))
    return render.my_devices(
        state, "csrf", False,
        hardware=render_tokens.claim_form("csrf", form),
        actions=lambda t: render_tokens.device_actions(t, "csrf", form),
    )  # fmt: skip


def test_every_input_has_a_label_and_no_inline_style_or_script() -> None:
    page = Page(devices_page())
    visible = [i for i in page.inputs if i.get("type") != "hidden"]
    assert len(visible) > 10
    for field in visible:
        assert field["id"] in page.labels, field
    assert page.styles == 0 and page.scripts == 0
    # The kind is a group of radio buttons with a legend; HOTP rows can be resynchronised.
    assert "<legend>Kind of token</legend>" in devices_page()
    assert "resync-h1-3" in page.ids and "resync-t1-1" not in page.ids
    assert "label-h1" in page.ids and "label-t1" in page.ids


def test_errors_stand_next_to_their_fields() -> None:
    errors = {
        "claim-serial": "No token you can add has this serial",
        "claim-code2": "HOTP tokens need three codes.",
        "resync-h1-1": "These are not three codes in a row",
        "label-t1": "a device name has 1 to 64 characters",
    }
    form = FormState({"claim-serial": "SN-9", "claim-kind": "hotp"}, errors)
    html = devices_page(form)
    page = Page(html)
    by_id = {i["id"]: i for i in page.inputs if "id" in i}
    for ident, text in errors.items():
        field = by_id[ident]
        assert f"{ident}-error" in field["aria-describedby"].split()
        assert field["aria-invalid"] == "true"
        # the error element comes right after its input in the document
        assert page.order[page.order.index(ident) + 1] == f"{ident}-error"
        assert text in html
    assert by_id["claim-serial"]["value"] == "SN-9"
    assert "aria-invalid" not in by_id["claim-code1"]
    # A disclosure whose form came back with an error is open; the others are closed.
    assert html.count("<details") == 3 + 0 and html.count(' open><summary>') == 2


def test_values_are_escaped_and_codes_are_never_echoed() -> None:
    html = devices_page(FormState({"claim-serial": '"><script>'}, {}))
    assert "<b>fob</b>" not in html and "&lt;b&gt;fob&lt;/b&gt;" in html
    assert "SN&lt;1&gt;" in html and '"><script>' not in html
    page = Page(html)
    for field in page.inputs:
        if field.get("name", "").startswith("code"):
            assert field.get("value", "") == ""


def test_sign_in_names_the_error_from_each_field() -> None:
    page = Page(render.sign_in("Sign-in failed.", "alice"))
    for ident in ("username", "password", "otp"):
        field = next(i for i in page.inputs if i["id"] == ident)
        assert "error" in field["aria-describedby"].split() and ident in page.labels
    assert 'role="alert"' in render.sign_in("Sign-in failed.")


def test_helpdesk_matches_list_name_upn_and_dn() -> None:
    html = render.matches([
        ("uid=ann,ou=people,dc=x", "ann", "ann@example.org", "Ann <Lee>"),
        ("uid=bo,ou=people,dc=x", "bo", "", ""),
    ]).html  # fmt: skip
    assert 'href="/helpdesk?q=uid%3Dann%2Cou%3Dpeople%2Cdc%3Dx">ann</a>' in html
    assert "Ann &lt;Lee&gt;" in html and "ann@example.org" in html
    assert "uid=bo,ou=people,dc=x" in html and "2 users match" in html
    assert render.matches([("uid=c,dc=x", "c")]).html.count("<li>") == 1  # (DN, login) still
    assert "No user matches" in render.matches([]).html
