import os
from pathlib import Path

from otpgate.config import parse_config
from otpgate.directory.entrycache import EntryCache
from otpgate.directory.ldapdata import Modification
from otpgate.directory.records import StateChange, UserEntry
from otpgate.directory.state import StateMapper
from otpgate.tokens import TokenUse, UsedState
from otpgate.vault import Keyring

ENTRY = UserEntry(dn="uid=a,dc=x", entry_id=b"id-a", used=(b"old",))


def test_ttl_counts_from_the_last_read_not_from_our_writes():
    cache = EntryCache(ttl=10)
    cache.put("A", ENTRY, now=100)
    # the entry comes back marked as served from the cache (equal: the mark is no data)
    assert cache.get("a", now=105) == ENTRY and cache.get("a", now=105).from_cache
    newer = UserEntry(dn="UID=A,DC=X", entry_id=b"id-a", used=(b"new",))
    cache.written(newer)
    assert cache.get("a", now=109) == newer and not ENTRY.from_cache
    assert cache.get("a", now=110) is None  # 10 s after the read, whatever we wrote since


def test_drop_and_disabled():
    cache = EntryCache(ttl=10)
    cache.put("a", ENTRY, now=0)
    cache.drop(ENTRY)
    assert cache.get("a", now=1) is None
    off = EntryCache(ttl=0)
    off.put("a", ENTRY, now=0)
    assert off.get("a", now=0) is None


def test_after_applies_a_plan_like_the_directory_would():
    config = parse_config({
        "directory": {"profile": "openldap-schema", "urls": ["ldap://127.0.0.1:1"],
                      "base_dn": "dc=x", "bind_dn": "cn=s,dc=x", "bind_password": "p"},
        "vault": {"keyring": "k"}}, Path("/"))
    mapper = StateMapper(config.directory, Keyring({"k": os.urandom(32)}, "k"))
    user = UserEntry(dn="uid=a,dc=x", entry_id=b"id-a", used=(b"stale-1", b"stale-2"))
    state = mapper.decode(UserEntry(dn="uid=a,dc=x", entry_id=b"id-a"))
    used = UsedState().with_use("t1", TokenUse(last=7))
    changes = mapper.plan(user, state, StateChange(None, used=used))
    assert [m.op for m in changes] == [Modification.DELETE, Modification.DELETE, Modification.ADD]
    after = mapper.after(user, changes)
    assert len(after.used) == 1 and after.used[0] == changes[-1].values[0]
    assert mapper._decode_used(after).use_of("t1").last == 7  # (no token t1: decode() would refuse)


def test_with_use_keeps_the_accepted_requests() -> None:
    """Enrolment and resync go through with_use, which must keep the RADIUS failover records
    (dropping them fails closed, but is not what the option promises)."""
    from otpgate.tokens import AcceptedRequest

    record = AcceptedRequest(b"\x01" * 32, "t1", 1_700_000_000_000)
    used = UsedState(accepted=(record,)).with_use("t2", TokenUse(last=3))
    assert used.accepted == (record,) and used.use_of("t2").last == 3
