"""``otpgate doctor``: is OTP state safe on a replicated OpenLDAP directory?

Reads every configured server as the service account (``directory/replication.py``:
contextCSN server ids of the suffix, and cn=config's olcServerID / olcMultiProvider
where readable) and judges: multi-provider replication without
``[directory] write_url`` is a FAIL, because two gateways writing OTP state to two
providers can accept one code twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from otpgate.admin.doctor import Check, Status
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.drive import run_steps
from otpgate.directory.ldap3conn import SyncConnection, connect
from otpgate.directory.ldapdata import LdapUrl
from otpgate.directory.replication import (
    PIN_FIX,
    ReplicationFacts,
    multi_provider_evidence,
    probe,
    readable,
    server_id_value,
)
from otpgate.errors import DirectoryError

AREA = "replication"


def server_facts(conn: SyncConnection, url: str, base_dn: str) -> ReplicationFacts:
    """Run ``replication.probe`` over an ldap3 connection."""
    return run_steps(
        probe(url, base_dn),
        lambda q: conn.search(q.base, q.filter_text, q.attributes, scope=q.scope),
    )


def collect(
    config: DirectoryConfig, slapd_configs: Sequence[Path] = ()
) -> tuple[list[ReplicationFacts], list[str]]:
    """The facts of every configured server (and the pinned one), and of the slapd
    configurations given (``--slapd-config``); errors by URL or path."""
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
    for path in slapd_configs:
        try:
            facts.append(slapd_config_facts(path))
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
    return facts, errors


def _true(value: str) -> bool:
    return value.strip().lower() in ("on", "true", "yes", "1")


def slapd_config_facts(path: Path) -> ReplicationFacts:
    """serverID and multiprovider/mirrormode from a slapd.conf file or a slapd.d folder.

    Only those keys are read (a slapd config also holds rootpw and syncrepl credentials)."""
    ids: set[int] = set()
    flag = False
    if path.is_dir():
        for ldif in sorted(path.rglob("*.ldif")):
            for line in ldif.read_text(errors="replace").splitlines():
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "olcserverid":
                    sid = server_id_value(value)
                    if sid is not None:
                        ids.add(sid)
                elif key in ("olcmultiprovider", "olcmirrormode"):
                    flag = flag or _true(value)
    else:
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            if not words or line[:1].isspace() or words[0].startswith("#"):
                continue  # blank, continued (syncrepl ...), or a comment
            key = words[0].lower()
            if key == "serverid" and len(words) > 1:
                sid = server_id_value(" ".join(words[1:]))
                if sid is not None:
                    ids.add(sid)
            elif key in ("multiprovider", "mirrormode") and len(words) > 1:
                flag = flag or _true(words[1])
    return ReplicationFacts(
        f"file {path}",
        suffix=None,
        config_read=True,
        config_server_ids=frozenset(ids),
        multi_provider_flag=flag,
    )


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
