"""Is the directory an OpenLDAP multi-provider set-up?  (Pure: facts in, verdict out.)

With several providers that each accept writes (syncrepl both ways, ``multiprovider on``,
formerly mirror mode), two gateways that keep OTP state on different providers can both
accept one code before replication carries either write across: measured 41 of 100 raced
codes accepted twice (docs/SECURITY.md).  So OTP state must be pinned to one provider
(``[directory] write_url``), and the gateway refuses OTP logins unpinned on such a set-up
(``ReplicationGuard`` in ``replication_guard.py``); ``otpgate doctor`` says the same.

What a server shows to the service account:

* ``contextCSN`` on the database suffix (kept by syncprov and by consumers): one value per
  server id that wrote, ``YYYYmmddHHMMSS.ffffffZ#count#sid#mod``.  Several server ids, or a
  non-zero one (OpenLDAP needs ``serverID`` only for multi-provider replication), mean
  multi-provider.  No contextCSN: no syncprov, nothing replicates from that server.
* ``cn=config``, where the service account may read it: ``olcServerID`` and
  ``olcMultiProvider``/``olcMirrorMode`` of the database (never ``olcSyncrepl``: its values
  carry the replication credentials).

The probe is a step (a generator of :class:`Query` answered with the entries found), so
the gateway (async) and the CLI (ldap3) run the same logic.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

from otpgate import ber
from otpgate.directory.ldapdata import SCOPE_BASE, SCOPE_SUBTREE, SearchEntry
from otpgate.errors import DirectoryError, DirectoryUnavailable

CONFIG_ATTRIBUTES = ("olcServerID", "olcMultiProvider", "olcMirrorMode", "olcSuffix")
"""Not olcSyncrepl: its values hold the replication credentials."""


@dataclass(frozen=True)
class Query:
    base: str
    filter_text: str
    filter_ber: bytes
    attributes: tuple[str, ...]
    scope: int


_ANY = Query("", "(objectClass=*)", ber.filter_present(b"objectClass"), (), SCOPE_BASE)
_CONFIG = Query(
    "cn=config",
    "(|(objectClass=olcGlobal)(objectClass=olcDatabaseConfig))",
    ber.filter_or(
        ber.filter_equal(b"objectClass", b"olcGlobal"),
        ber.filter_equal(b"objectClass", b"olcDatabaseConfig"),
    ),
    CONFIG_ATTRIBUTES,
    SCOPE_SUBTREE,
)


@dataclass(frozen=True)
class ReplicationFacts:
    """What one server showed."""

    url: str
    suffix: str | None = None
    """The naming context holding base_dn (None: the root DSE names none)."""
    csn_server_ids: frozenset[int] = frozenset()
    """Server ids of the suffix's contextCSN values (empty: none, or not readable)."""
    config_read: bool = False
    """cn=config was readable (the rest of the config_* fields mean something)."""
    config_server_ids: frozenset[int] = frozenset()
    multi_provider_flag: bool = False
    """olcMultiProvider / olcMirrorMode TRUE on the suffix's database."""


def csn_server_id(csn: bytes | str) -> int | None:
    """The server id (hex, third field) of a CSN, or None if it is not one."""
    text = csn.decode("ascii", "replace") if isinstance(csn, bytes) else csn
    parts = text.strip().split("#")
    if len(parts) != 4:
        return None
    try:
        return int(parts[2], 16)
    except ValueError:
        return None


def server_id_value(value: bytes | str) -> int | None:
    """``olcServerID: 1`` or ``2 ldap://host/`` (decimal, or hex with 0x) -> the id."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    words = text.split()
    if not words:
        return None
    try:
        return int(words[0], 0)
    except ValueError:
        return None


def _suffix_for(naming_contexts: Iterable[bytes], base_dn: str) -> str | None:
    base = base_dn.replace(" ", "").lower()
    best: str | None = None
    for raw in naming_contexts:
        nc = raw.decode("utf-8", "replace")
        key = nc.replace(" ", "").lower()
        matches = key and (base == key or base.endswith("," + key))
        if matches and (best is None or len(nc) > len(best)):
            best = nc
    return best


def _is_true(values: Sequence[bytes]) -> bool:
    return any(v.strip().upper() == b"TRUE" for v in values)


def config_facts(
    entries: Sequence[SearchEntry], suffix: str | None
) -> tuple[bool, frozenset[int], bool]:
    """cn=config entries -> (config_read, config_server_ids, multi_provider_flag)."""
    ids: set[int] = set()
    flag = False
    wanted = (suffix or "").replace(" ", "").lower()
    for entry in entries:
        for value in entry.attributes.get("olcserverid", []):
            sid = server_id_value(value)
            if sid is not None:
                ids.add(sid)
        suffixes = [
            s.decode("utf-8", "replace").replace(" ", "").lower()
            for s in entry.attributes.get("olcsuffix", [])
        ]
        if suffixes and wanted and wanted not in suffixes:
            continue  # another database
        flag = flag or _is_true(entry.attributes.get("olcmultiprovider", []))
        flag = flag or _is_true(entry.attributes.get("olcmirrormode", []))
    return bool(entries), frozenset(ids), flag


Probe = Generator[Query, list[SearchEntry], ReplicationFacts]


class ProbeRefused(DirectoryError):
    """A server answered the replication probe with an error: nothing can be ruled out."""


def probe(url: str, base_dn: str) -> Probe:
    """The searches that collect one server's :class:`ReplicationFacts`.

    Answered with the entries found; a refused search is thrown in (``DirectoryError``): on
    the root DSE or the suffix it ends the probe with :class:`ProbeRefused` (cannot judge),
    on cn=config it counts as "not readable" (most service accounts may not read it); a lost
    connection (``DirectoryUnavailable``) propagates."""
    try:
        dse = yield Query("", _ANY.filter_text, _ANY.filter_ber, ("namingContexts",), SCOPE_BASE)
    except DirectoryUnavailable:
        raise
    except DirectoryError as exc:
        # A server that answers but refuses (busy, time limit, access...) has not shown that
        # it does not replicate: the guard must not read that as "safe".
        raise ProbeRefused(f"{url}: the root DSE read was refused: {exc}") from exc
    contexts = dse[0].attributes.get("namingcontexts", []) if dse else []
    suffix = _suffix_for(contexts, base_dn)
    ids: frozenset[int] = frozenset()
    if suffix is not None:
        try:
            head = yield Query(
                suffix, _ANY.filter_text, _ANY.filter_ber, ("contextCSN",), SCOPE_BASE
            )
        except DirectoryUnavailable:
            raise
        except DirectoryError as exc:
            raise ProbeRefused(f"{url}: reading {suffix}'s contextCSN was refused: {exc}") from exc
        values = head[0].attributes.get("contextcsn", []) if head else []
        ids = frozenset(sid for sid in map(csn_server_id, values) if sid is not None)
    try:
        config = yield _CONFIG
    except DirectoryUnavailable:
        raise
    except DirectoryError:
        config = []
    return ReplicationFacts(url, suffix, ids, *config_facts(config, suffix))


def multi_provider_evidence(facts: Sequence[ReplicationFacts]) -> str | None:
    """Why these servers look like OpenLDAP multi-provider replication, or None."""
    reasons: list[str] = []
    for f in facts:
        if f.multi_provider_flag:
            reasons.append(f"{f.url}: olcMultiProvider (mirror mode) is on")
        if len(f.config_server_ids) > 1:
            ids = ", ".join(map(str, sorted(f.config_server_ids)))
            reasons.append(f"{f.url}: cn=config lists server ids {ids}")
    seen = frozenset().union(*(f.csn_server_ids for f in facts)) if facts else frozenset()
    if len(seen) > 1:
        ids = ", ".join(map(str, sorted(seen)))
        where = ", ".join(f.url for f in facts if f.csn_server_ids)
        reasons.append(f"contextCSN values from server ids {ids} ({where})")
    elif seen and min(seen) != 0:
        (sid,) = seen
        reasons.append(
            f"contextCSN from server id {sid}: serverID is set, which OpenLDAP needs only "
            "for multi-provider replication"
        )
    return "; ".join(reasons) or None


def readable(facts: Sequence[ReplicationFacts]) -> bool:
    """Whether any server showed a suffix (else nothing could be judged)."""
    return any(f.suffix is not None or f.config_read for f in facts)


PIN_FIX = (
    "set [directory] write_url to one provider's URL (every gateway the same one): OTP state "
    "then lives on that server alone and logins fail closed while it is down; only where "
    "accepting one code twice is acceptable, allow_unpinned_multi_provider = true"
)
