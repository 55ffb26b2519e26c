"""The census's suggestion: ``[[policy.exempt]]`` tables, ready to paste into the config, for
the accounts that look like services and still need a code.  Pure.

Each table is scoped to the addresses the account was seen logging in from (``networks``, one
host each) and to the listeners and NASes it used (``listeners``, ``nas``), says in its
``note`` what was seen and when, and carries a commented ``until`` 90 days on: an exemption
is a decision to make, and to revisit.  An account with refused logins is not suggested but
named in a comment: anyone can send logins in any account's name, and a service whose
password is right is not refused.  Services under the same
parent whose first RDN values share a prefix of at least ``PREFIX`` characters become one
``pattern`` (``uid=svc-*,ou=services,...``), unless that pattern would also cover an account
the census saw that is not a service.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from dataclasses import dataclass

from otpgate.auth.exemptions import Exemption, Exemptions, pattern_rdns
from otpgate.census.model import SERVICE, AccountRow, requires_code
from otpgate.configfile import client_address
from otpgate.dn import dn_key
from otpgate.tokens import UNSAFE_TEXT

PREFIX = 3
"""Characters a group's first RDN values must share: "svc-" groups, "a" or "jo" do not."""
UNTIL_DAYS = 90
"""The commented end date, from today: long enough to replace the service's password with a
certificate or an exemption of its own, short enough to be looked at again."""
NOTE_ADDRESSES = 3
"""Addresses named in a note (``networks`` lists them all)."""


@dataclass(frozen=True)
class _Block:
    kind: str
    value: str
    rows: tuple[AccountRow, ...]


def _networks(rows: Iterable[AccountRow]) -> list[str]:
    found: list[str] = []
    for row in rows:
        for client in row.clients:
            # as exemptions read a client: an IPv4-mapped address is its IPv4 address
            address = client_address(client)
            if address is None:
                continue
            net = f"{address}/{address.max_prefixlen}"
            if net not in found:
                found.append(net)
    return found


def _common_prefix(values: list[str]) -> str:
    first, last = min(values), max(values)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    prefix = first[:n]
    # never end inside an escape (a canonical value escapes its special characters)
    trailing = len(prefix) - len(prefix.rstrip("\\"))
    return prefix[:-1] if trailing % 2 else prefix


def _pattern_groups(services: list[AccountRow]) -> tuple[list[_Block], list[AccountRow]]:
    """Patterns for services that share a parent, an RDN type and a value prefix; the rest."""
    by_parent: dict[tuple[str, ...], list[tuple[str, str, AccountRow]]] = {}
    rest: list[AccountRow] = []
    for row in services:
        key = dn_key(row.dn or "")
        if not key or "+" in key[0].replace("\\+", ""):
            rest.append(row)
            continue
        attribute, _, value = key[0].partition("=")
        by_parent.setdefault((attribute, *key[1:]), []).append((value, value[:PREFIX], row))
    blocks: list[_Block] = []
    for parent, members in by_parent.items():
        by_start: dict[str, list[tuple[str, str, AccountRow]]] = {}
        for member in members:
            by_start.setdefault(member[1], []).append(member)
        for start, group in by_start.items():
            values = [v for v, _, _ in group]
            prefix = _common_prefix(values) if len(group) >= 2 else ""
            if len(start) < PREFIX or len(prefix) < PREFIX or "*" in prefix:
                rest += [r for _, _, r in group]
                continue
            attribute, *above = parent
            pattern = ",".join([f"{attribute}={prefix}*", *above])
            blocks.append(_Block("pattern", pattern, tuple(r for _, _, r in group)))
    return blocks, rest


def _safe(block: _Block, others: list[AccountRow]) -> bool:
    """The pattern is well formed and covers none of the accounts that are not services."""
    try:
        pattern_rdns(block.value)
    except ValueError:
        return False
    exemptions = Exemptions((Exemption("pattern", block.value),))
    return not any(row.dn and exemptions.named(row.dn) for row in others)


def _candidates(rows: list[AccountRow]) -> list[AccountRow]:
    return [
        r for r in rows if r.verdict == SERVICE and requires_code(r.policy) and dn_key(r.dn or "")
    ]


def _blocks(rows: list[AccountRow]) -> list[_Block]:
    services = [r for r in _candidates(rows) if not r.refused]
    others = [r for r in rows if r.verdict != SERVICE]
    patterns, rest = _pattern_groups(services)
    blocks: list[_Block] = []
    for block in patterns:
        if _safe(block, others):
            blocks.append(block)
        else:
            rest += block.rows
    blocks += [_Block("dn", r.dn or "", (r,)) for r in rest]
    blocks.sort(key=lambda b: (-sum(r.binds for r in b.rows), b.value))
    return blocks


def _toml(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's), with every character that could
    mislead a terminal (``UNSAFE_TEXT``) escaped as ``\\uNNNN``."""
    return UNSAFE_TEXT.sub(lambda m: f"\\u{ord(m[0]):04x}", json.dumps(text, ensure_ascii=False))


def _places(rows: Iterable[AccountRow], field: str) -> list[str]:
    found: list[str] = []
    for row in rows:
        found += [p for p in getattr(row, field) if p not in found]
    return found


def suggestion(rows: list[AccountRow], today: datetime.date) -> str:
    """TOML to paste into the config for the services that need a code ("" if none)."""
    blocks = _blocks(rows)
    doubtful = [r for r in _candidates(rows) if r.refused]
    if not blocks and not doubtful:
        return ""
    until = today + datetime.timedelta(days=UNTIL_DAYS)
    out = [
        f"# otpgate census {today.isoformat()}: accounts that look like services and need a "
        "code here;",
        "# each exemption holds only from the addresses and on the listeners/NASes they were",
        "# seen using. Verdicts rest on accepted logins; refused ones anyone can send.",
    ]
    for block in blocks:
        binds = sum(r.binds for r in block.rows)
        networks = _networks(block.rows)
        shown = ", ".join(networks[:NOTE_ADDRESSES]) or "no logged address"
        if len(networks) > NOTE_ADDRESSES:
            shown += f" and {len(networks) - NOTE_ADDRESSES} more"
        accounts = f"{len(block.rows)} accounts, " if len(block.rows) > 1 else ""
        note = (
            f"census {today.isoformat()}: {accounts}{binds} binds, never typed a code, "
            f"from {shown}"
        )
        out.append("")
        if block.kind == "pattern":
            names = ", ".join(_toml(r.dn or "") for r in block.rows)
            out.append(f"# {block.value} covers what the census saw of: {names}")
        table = [
            "[[policy.exempt]]",
            f"{block.kind} = {_toml(block.value)}",
            "networks = [" + ", ".join(_toml(n) for n in networks) + "]",
        ]
        for field in ("listeners", "nas"):
            places = _places(block.rows, field)
            if places:
                table.append(f"{field} = [" + ", ".join(_toml(p) for p in places) + "]")
        table.append(f"note = {_toml(note)}")
        if not networks:  # an exemption from anywhere is not suggested: left commented out
            out.append("# no source address was logged: give networks before using this")
            table = ["# " + line for line in table]
        out += table
        out.append(f"# until = {until.isoformat()}")
    for row in doubtful:
        out.append("")
        out.append(
            f"# not suggested: {_toml(row.dn or '')} looks like a service but had "
            f"{row.refused} refused logins (anyone can send logins in its name): look first"
        )
    return "\n".join(out) + "\n"
