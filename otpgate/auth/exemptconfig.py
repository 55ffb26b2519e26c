"""``[[policy.exempt]]`` and ``[[policy.grace]]`` tables read into ``exemptions.py``'s
objects; every error names the table and key.  Whether a listener or NAS an exemption names
exists is checked once the whole file is read (``check_scopes``)."""

from __future__ import annotations

import datetime
from typing import Any

from otpgate.auth.exemptions import KINDS, Exemption, Grace, pattern_rdns
from otpgate.configfile import Section
from otpgate.dn import dn_key
from otpgate.errors import ConfigError


def end_of(sec: Section, name: str) -> tuple[float, str] | None:
    """``until``: a TOML date (the exemption holds through that day, UTC) or a date-time with
    its offset (it ends then); also as a string.  (Unix time it ends, text as written.)"""
    value: Any = sec.get(name, object, None)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = (
                datetime.date.fromisoformat(value)
                if len(value) == 10
                else datetime.datetime.fromisoformat(value)
            )
        except ValueError:
            value = None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ConfigError(f"{sec.key(name)}: give the time zone, e.g. 2027-01-31T18:00:00Z")
        return value.timestamp(), value.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.date):
        end = datetime.datetime.combine(value, datetime.time(), datetime.UTC)
        return (end + datetime.timedelta(days=1)).timestamp(), value.isoformat()
    raise ConfigError(
        f"{sec.key(name)}: expected a date (2027-01-31: through that day, UTC) or a date-time "
        "with a time zone"
    )


def _tables(sec: Section, name: str) -> list[Section]:
    raw = sec.raw(name) or []
    if not isinstance(raw, list):
        raise ConfigError(f"{sec.key(name)}: expected [[{sec.path}.{name}]] tables")
    tables = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{sec.key(name)}[{i}]: expected a table")
        tables.append(Section(item, f"{sec.path}.{name}[{i}]"))
    return tables


def parse_exemptions(sec: Section) -> tuple[Exemption, ...]:
    """``[[policy.exempt]]``: exactly one of dn, subtree, pattern, group, or networks alone."""
    result = []
    for table in _tables(sec, "exempt"):
        named = [k for k in KINDS if table.given(k)]
        networks = table.networks("networks")
        if len(named) > 1:
            raise ConfigError(f"{table.key(named[1])}: give one of {', '.join(KINDS)}, not two")
        if not named and not networks:
            raise ConfigError(
                f"{table.key('dn')}: give one of {', '.join(KINDS)} (or networks alone)"
            )
        kind = named[0] if named else "network"
        value = table.get(kind, str, "") if named else ""
        if kind == "pattern":
            table.check(kind, value, pattern_rdns)
        elif named and (not value or dn_key(value) is None):
            raise ConfigError(f"{table.key(kind)}: {value!r} is not a DN")
        end = end_of(table, "until")
        listeners, nas = table.strings("listeners"), table.strings("nas")
        if kind == "network" and not (listeners or nas):
            raise ConfigError(
                f"{table.key('networks')}: an exemption by network alone names the listeners "
                "or nas it holds for ([policy] trusted_networks holds everywhere)"
            )
        result.append(
            Exemption(
                kind=kind,
                value=value,
                networks=networks,
                listeners=listeners,
                nas=nas,
                until=end[0] if end else None,
                until_text=end[1] if end else "",
                note=table.get("note", str, ""),
            )
        )
        table.done()
    return tuple(result)


def parse_graces(sec: Section) -> tuple[Grace, ...]:
    """``[[policy.grace]]``: a group and the date its members must have enrolled by."""
    result = []
    for table in _tables(sec, "grace"):
        name = table.require("group", str, "one group DN")
        if dn_key(name) is None:
            raise ConfigError(f"{table.key('group')}: {name!r} is not a DN")
        end = end_of(table, "until")
        if end is None:
            raise ConfigError(f"{table.key('until')} is required (the date enrollment is due)")
        result.append(Grace(name, end[0], end[1]))
        table.done()
    return tuple(result)


def check_scopes(
    exemptions: tuple[Exemption, ...], listen: tuple[str, ...], nas: tuple[str, ...]
) -> None:
    """Every listener and NAS an exemption names exists (``[ldap_proxy] listen``, the
    ``[[radius.clients]]`` names or networks): a typo would silently exempt nobody."""
    for i, exemption in enumerate(exemptions):
        check_places(f"policy.exempt[{i}]", exemption.listeners, exemption.nas, listen, nas)


def check_places(
    key: str,
    listeners: tuple[str, ...],
    nas: tuple[str, ...],
    listen: tuple[str, ...],
    known: tuple[str, ...],
) -> None:
    """``listeners`` and ``nas`` (the keys of the table ``key``) name only listeners of
    ``[ldap_proxy] listen`` and NASes by their name (or network where they have none)."""
    for name in listeners:
        if name not in listen:
            raise ConfigError(
                f"{key}.listeners: {name!r} is not one of [ldap_proxy].listen "
                "(name the listener exactly as it is written there)"
            )
    for name in nas:
        if name not in known:
            names = ", ".join(repr(n) for n in known) or "none"
            raise ConfigError(
                f"{key}.nas: {name!r} is not the name of one of the "
                f"[[radius.clients]] (their name, or network where they have none: {names})"
            )
