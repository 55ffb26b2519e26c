"""Destinations as people may see them: enough to recognise, not enough to harvest.

``mask_phone("+491511234589")`` → ``"+•••••89"``; ``mask_email("alice@example.org")`` →
``"a•••@example.org"``.  The number of hidden characters is fixed, so the mask does not
tell the length either.
"""

from __future__ import annotations

DOT = "\u2022"


def mask_phone(number: str) -> str:
    """The last two digits, and the "+" of an international number."""
    digits = "".join(c for c in number if c.isdigit())
    prefix = "+" if number.strip().startswith("+") else ""
    if len(digits) < 4:
        return prefix + DOT * 5
    return f"{prefix}{DOT * 5}{digits[-2:]}"


def mask_email(address: str) -> str:
    """The first character of the local part and the whole domain."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        return DOT * 3
    return f"{local[0]}{DOT * 3}@{domain}"


def mask(destination: str) -> str:
    """An e-mail address or a phone number, whichever ``destination`` is."""
    return mask_email(destination) if "@" in destination else mask_phone(destination)
