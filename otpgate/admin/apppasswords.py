"""Creating, listing and revoking app passwords (pure state changes, shared by the CLI, the
portal and the help desk; each runs inside the state engine's compare-and-swap).

A new app password is generated before the change runs, so a compare-and-swap retried on a
fresh read stores the same secret that is shown.  The secret is shown once and never
stored: only its keyed hash is (``apppass.py``).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from otpgate.apppass import AppPassword, Scope, check_name, digest, generate, new_key
from otpgate.auth.appconfig import AppPasswordConfig
from otpgate.directory.records import OtpState, StateChange
from otpgate.errors import NoSuchToken, PolicyError
from otpgate.tokens import AppUse, TokenType, new_token_id

T = TypeVar("T")


class Refused(PolicyError):
    """What a person asked for, refused, and which part of it: ``about`` is "name",
    "networks", "expires" or "where" (the places, or the session asking)."""

    def __init__(self, message: str, about: str = "where") -> None:
        super().__init__(message)
        self.about = about


@dataclass(frozen=True)
class Created:
    app: AppPassword
    secret: str = field(repr=False)
    """The app password itself: shown once to whoever created it, never stored."""


def scope_for(
    places: AppPasswordConfig,
    listeners: Sequence[str] = (),
    nas: Sequence[str] = (),
    networks: Sequence[str] = (),
    expires: str | int | None = None,
    now: float = 0.0,
) -> Scope:
    """A scope from what a person chose, checked against ``[app_passwords]``; ``Refused``
    (naming what is wrong) otherwise.  ``expires``: a date (through that day, UTC), or a
    Unix time."""
    if not places.enabled:
        raise Refused("app passwords are off: [app_passwords] names no listener or NAS")
    for name in listeners:
        if name not in places.listeners:
            raise Refused(f"listener {name!r} does not take app passwords")
    for name in nas:
        if name not in places.nas:
            raise Refused(f"NAS {name!r} does not take app passwords")
    nets = []
    for text in networks:
        try:
            nets.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError as exc:
            raise Refused(f"network {text!r}: {exc}", "networks") from exc
    end = 0
    if isinstance(expires, int):
        end = expires
    elif expires:
        try:
            day = datetime.date.fromisoformat(expires.strip())
        except ValueError as exc:
            raise Refused(f"expiry {expires!r}: a date such as 2027-03-31", "expires") from exc
        end = int(datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp())
        end += 86400
    if end and end <= now:
        raise Refused("the expiry date has passed", "expires")
    if nets and nas:
        # A RADIUS request comes from the NAS, not from the user's device: a network would
        # name the NAS's address, always or never matching wherever the user is.
        raise Refused(
            "source networks apply to LDAP listeners only (a RADIUS login comes from the "
            "NAS's address): make one app password for the NASes, another for the listeners"
        )
    try:
        return Scope(tuple(listeners), tuple(nas), tuple(nets), end)
    except ValueError as exc:
        raise Refused(str(exc)) from exc


def create_change(
    name: str, scope: Scope, now: float, max_per_user: int, by: str = ""
) -> tuple[str, Callable[[OtpState], StateChange[Created]]]:
    """(the secret, the change that stores its record); the user's hash key is made with her
    first app password.  ``by``: the token whose code opened the portal session asking (the
    app password ends with it); a session opened with a code sent by e-mail may not create
    one (the mailbox the code went to may be what the app password is for)."""
    try:
        check_name(name)
    except ValueError as exc:
        raise Refused(str(exc), "name") from exc
    secret = generate()
    ident = new_token_id()
    fresh_key = new_key()

    def change(state: OtpState) -> StateChange[Created]:
        if len(state.apps) >= max_per_user:
            raise Refused(
                f"the user already has {len(state.apps)} app passwords, the maximum is "
                f"{max_per_user} ([app_passwords].max_per_user): revoke one first"
            )
        if any(a.name == name for a in state.apps):
            raise Refused(f"the user already has an app password named {name!r}", "name")
        taken = {t.id for t in state.tokens} | {a.id for a in state.apps}
        if ident in taken:
            raise Refused("an id clash; try again")
        if by:
            token = state.token(by)
            if token is None:
                raise Refused("the token this session was opened with is gone: sign in again")
            if token.type is TokenType.EMAIL:
                raise Refused(
                    "a session opened with a code sent by e-mail cannot create app passwords "
                    "(whoever reads that mailbox, e.g. with an app password, would get more): "
                    "sign in with another token"
                )
        key = state.app_key or fresh_key
        app = AppPassword(ident, name, scope, int(now), digest(key, secret), by=by)
        return StateChange(
            Created(app, secret), apps=(*state.apps, app), app_key=None if state.app_key else key
        )

    return secret, change


def find_app(state: OtpState, ref: str) -> AppPassword:
    """The app password named or numbered ``ref``."""
    hits = [a for a in state.apps if ref in (a.id, a.name)]
    if len(hits) != 1:
        raise NoSuchToken(f"the user has no app password {ref!r}")
    return hits[0]


def dropping_apps(state: OtpState, change: StateChange[T], ids: set[str]) -> StateChange[T]:
    """``change`` that also removes the app passwords ``ids`` and their last use (and the
    hash key with the last of them)."""
    if not ids:
        return change
    used = change.used if change.used is not None else state.used
    used = replace(used, apps={k: v for k, v in used.apps.items() if k not in ids})
    kept = tuple(a for a in state.apps if a.id not in ids)
    return replace(change, used=used, apps=kept, app_key=b"" if not kept else change.app_key)


def made_with(state: OtpState, token_ids: set[str]) -> set[str]:
    """The app passwords created in portal sessions opened with one of ``token_ids``."""
    return {a.id for a in state.apps if a.by and a.by in token_ids}


def revoke_change(state: OtpState, ref: str | None) -> StateChange[tuple[AppPassword, ...]]:
    """Remove one app password (``ref``: id or name), or all of them (None), and their last
    use.  The use state is rewritten too, so a login holding an older read loses its
    compare-and-swap and sees the revocation."""
    gone = state.apps if ref is None else (find_app(state, ref),)
    return dropping_apps(state, StateChange(gone), {a.id for a in gone})


def listing(state: OtpState, now: float) -> list[dict[str, Any]]:
    """Each app password for people: name, scope, created, expiry, last use (no hash)."""
    rows = []
    for app in state.apps:
        use: AppUse | None = state.used.apps.get(app.id)
        row = app.shown()
        row["expired"] = app.expired(now)
        row["last_used"] = use.at if use else None
        row["last_from"] = use.client if use else ""
        row["last_where"] = use.where if use else ""
        rows.append(row)
    return rows
