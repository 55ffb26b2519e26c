"""Form parts shared by the portal's pages (pure): a labelled input with its hint and its
error next to it, named by ``aria-describedby``; what a form keeps when it comes back with
errors.  ``render`` re-exports them; every value is escaped here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from html import escape


def h(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class FormState:
    """A form shown again after a refusal: the values to keep (never a code or password) and
    one error per field, keyed by the field's id."""

    values: Mapping[str, str] = dataclass_field(default_factory=dict)
    errors: Mapping[str, str] = dataclass_field(default_factory=dict)

    def value(self, ident: str, default: str = "") -> str:
        return self.values.get(ident, default)

    def error(self, ident: str) -> str | None:
        return self.errors.get(ident)

    def any_error(self, *idents: str) -> bool:
        return any(i in self.errors for i in idents)


NO_FORM = FormState()


def attributes(extra: Mapping[str, str]) -> str:
    """HTML attributes, each name and value escaped (an empty value: the bare name)."""
    return "".join(f' {h(k)}="{h(v)}"' if v else f" {h(k)}" for k, v in extra.items())


def field(
    ident: str,
    name: str,
    label: str,
    *,
    value: str = "",
    error: str | None = None,
    hint: str | None = None,
    kind: str = "text",
    extra: Mapping[str, str] | None = None,
    css: str = "",
) -> str:
    """A labelled input with its hint above it and its error right after it, both named by
    the input's ``aria-describedby`` (screen readers read them with the field)."""
    described = []
    hint_html = error_html = ""
    if hint:
        described.append(f"{ident}-hint")
        hint_html = f'<p class="hint" id="{h(ident)}-hint">{h(hint)}</p>'
    if error:
        described.append(f"{ident}-error")
        error_html = f'<p class="field-error" id="{h(ident)}-error">{h(error)}</p>'
    attrs: dict[str, str] = {"type": kind, "id": ident, "name": name, "value": value}
    if described:
        attrs["aria-describedby"] = " ".join(described)
    if error:
        attrs["aria-invalid"] = "true"
    attrs.update(extra or {})
    classes = " ".join(c for c in ("field", css, "has-error" if error else "") if c)
    return (
        f'<div class="{h(classes)}"><label for="{h(ident)}">{h(label)}</label>{hint_html}'
        f"<input{attributes(attrs)}>{error_html}</div>"
    )
