"""``otpgate doctor``: is OTP state safe on a replicated OpenLDAP directory?

Reads every configured server as the service account (``directory/replication.py``:
contextCSN server ids of the suffix, and cn=config's olcServerID / olcMultiProvider
where readable) and judges: multi-provider replication without
``[directory] write_url`` is a FAIL, because two gateways writing OTP state to two
providers can accept one code twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from otpgate.admin.doctor import Check, Status
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.ldap3conn import SyncConnection, connect
from otpgate.directory.ldapdata import DirectoryError, DirectoryUnavailable, LdapUrl, SearchEntry
from otpgate.directory.replication import (
    PIN_FIX,
    ReplicationFacts,
    multi_provider_evidence,
    probe,
    readable,
)

AREA = "replication"


def server_facts(conn: SyncConnection, url: str, base_dn: str) -> ReplicationFacts:
    """Run ``replication.probe`` over an ldap3 connection."""
    step = probe(url, base_dn)
    query = next(step)
    while True:
        answer: list[SearchEntry] = []
        error: DirectoryError | None = None
        try:
            answer = conn.search(query.base, query.filter_text, query.attributes, scope=query.scope)
        except DirectoryUnavailable:
            raise
        except DirectoryError as exc:
            error = exc
        try:
            query = step.throw(error) if error is not None else step.send(answer)
        except StopIteration as done:
            facts: ReplicationFacts = done.value
            return facts


def collect(config: DirectoryConfig) -> tuple[list[ReplicationFacts], list[str]]:
    """The facts of every configured server (and the pinned one); errors by URL."""
    urls = list(config.urls)
    if config.write_url is not None and config.write_url != "discover":
        urls = list(dict.fromkeys([*urls, config.write_url]))
    facts, errors = [], []
    for text in urls:
        try:
            conn = connect(LdapUrl.parse(text), config, None, None)
        except DirectoryError as exc:
            errors.append(f"{text}: {exc}")
            continue
        try:
            facts.append(server_facts(conn, text, config.base_dn))
        except DirectoryError as exc:
            errors.append(f"{text}: {exc}")
        finally:
            conn.close()
    return facts, errors


def _ids(facts: Sequence[ReplicationFacts]) -> str:
    seen = sorted(frozenset().union(*(f.csn_server_ids for f in facts))) if facts else []
    return ", ".join(map(str, seen)) or "none"


def replication_checks(
    config: DirectoryConfig, facts: Sequence[ReplicationFacts], errors: Sequence[str]
) -> list[Check]:
    checks = [Check(AREA, Status.WARN, f"could not read {e}") for e in errors]
    if not facts or not readable(facts):
        checks.append(
            Check(
                AREA,
                Status.WARN,
                "cannot tell whether the servers replicate as multi-provider: no server showed "
                f"a naming context holding {config.base_dn}",
                "let the service account read the suffix entry's contextCSN",
            )
        )
        return checks
    evidence = multi_provider_evidence(facts)
    if evidence is None:
        checks.append(
            Check(
                AREA,
                Status.OK,
                f"no multi-provider replication seen (contextCSN server ids: {_ids(facts)})",
            )
        )
    elif config.write_url is not None:
        checks.append(
            Check(
                AREA,
                Status.OK,
                f"multi-provider replication ({evidence}); OTP state pinned to {config.write_url}",
            )
        )
    else:
        override = config.allow_unpinned_multi_provider
        consequence = (
            "allow_unpinned_multi_provider = true lets the gateway write it anyway"
            if override
            else "the gateway refuses every OTP login until this is fixed"
        )
        checks.append(
            Check(
                AREA,
                Status.FAIL,
                f"unsafe for OTP state: multi-provider replication ({evidence}) and no "
                "[directory] write_url, so gateways writing to different providers can accept "
                f"one code twice; {consequence}",
                PIN_FIX,
            )
        )
    return checks
