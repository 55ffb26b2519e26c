"""Reply attributes and accounting-friendly answers through the real pipeline and RADIUS
server, on the in-memory directory: the rules read the entry the pipeline resolved (no
lookup of their own), every Accept carries Class = otpgate:<login id> and that id is in the
login's audit event, a refusal by the rules is audited, and no Reject carries a reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest_twisted
from pyrad import packet as pp
from pyrad.dictionary import Dictionary

from otpgate.audit import AuditTrail
from otpgate.auditconfig import LoggingConfig
from otpgate.otp.oath import hotp
from otpgate.radius.attributes import load_dictionary
from otpgate.radius.server import RadiusServer
from otpgate.stats import RadiusCounters
from tests.unit.test_pipeline import PW, World, config

SECRET = b"0123456789abcdef-secret"
NAS = ("192.0.2.10", 40000)
DICTIONARY = load_dictionary()
STAFF = "cn=VPN Staff,ou=groups,dc=x"
QUARANTINE = "cn=quarantine,ou=groups,dc=x"
VLAN = {"Tunnel-Type:1": "VLAN", "Tunnel-Medium-Type:1": "IEEE-802"}


def nas(**client: Any) -> dict[str, Any]:
    return {"address": "192.0.2.0/24", "secret": SECRET.decode(), "name": "vpn", **client}


RULES = [
    {"member_of": QUARANTINE, "attributes": {**VLAN, "Tunnel-Private-Group-Id:1": "999"}},
    {"member_of": STAFF, "attributes": {**VLAN, "Tunnel-Private-Group-Id:1": "10",
                                        "Cisco-AVPair": "shell:priv-lvl=15"},
     "group_names": ["Class"], "from_entry": {"Filter-Id": "departmentNumber"}},
    {"attributes": {**VLAN, "Tunnel-Private-Group-Id:1": "20"}},
]


class Setup:
    def __init__(
        self, clients: list[dict[str, Any]], quarantine: bool = True, **sections: Any
    ) -> None:
        self.world = World(config("user", radius={"clients": clients}, **sections))
        d = self.world.directory
        self.alice = d.add_user("alice", PW, departmentNumber=["Sales"])
        self.bob = d.add_user("bob", PW)
        d.add_group(STAFF, [self.alice])
        if quarantine:
            d.add_group(QUARANTINE, [])
        self.events: list[dict[str, Any]] = []
        self.world.auth.audit.observers.append(self.events.append)
        gateway = SimpleNamespace(
            config=self.world.config, authenticator=self.world.auth,
            check_password=self.world.directory.check_password,
            radius_counters=RadiusCounters(),
        )
        self.server = RadiusServer(gateway, self.world.clock)
        self.sent: list[bytes] = []

    def send(self, name: str, password: str, *attrs: tuple[Any, bytes]) -> Any:
        pkt = pp.AuthPacket(id=len(self.sent) % 256, secret=SECRET, dict=Dictionary())
        pkt.authenticator = os.urandom(16)
        pkt[1] = [name.encode()]
        pkt[2] = [pkt.PwCrypt(password)]
        for key, value in attrs:
            pkt.setdefault(key, []).append(value)
        pkt.add_message_authenticator()
        before = len(self.sent)
        self.server.datagram(pkt.RequestPacket(), NAS, lambda data, _addr: self.sent.append(data))
        assert len(self.sent) == before + 1
        raw = self.sent[-1]
        assert pkt.VerifyReply(pp.AuthPacket(packet=raw, secret=SECRET, dict=Dictionary()), raw,
                               enforce_ma=True)
        return pp.AuthPacket(packet=raw, secret=SECRET, dict=DICTIONARY)


def login_ids(reply: Any) -> list[str]:
    return [v[8:].decode() for v in reply.get("Class", []) if v.startswith(b"otpgate:")]


@pytest_twisted.ensureDeferred
async def test_accept_carries_the_rules_class_and_message_from_the_resolved_entry():
    s = Setup([nas(reply=RULES, accept_message="Welcome to the VPN")])
    key = await s.world.oath("alice")
    s.world.clock.advance(11)  # past the entry cache: this login reads the entry
    s.world.directory.operations.clear()
    reply = s.send("alice", PW + hotp(key, 0))
    assert reply.code == pp.AccessAccept
    assert reply["Tunnel-Type:1"] == ["VLAN"] and reply["Tunnel-Medium-Type:1"] == ["IEEE-802"]
    assert reply["Tunnel-Private-Group-Id:1"] == ["10"]
    assert reply["Cisco-AVPair"] == ["shell:priv-lvl=15"] and reply["Filter-Id"] == ["Sales"]
    assert reply["Reply-Message"] == ["Welcome to the VPN"]
    (login_id,) = login_ids(reply)
    assert reply["Class"] == [b"otpgate:" + login_id.encode(), b"VPN Staff"]  # id first
    assert len(login_id) == 24 and s.world.config.directory.base_dn not in login_id
    (event,) = s.events
    assert event["outcome"] == "accept" and event["login_id"] == login_id
    # No lookup of the rules' own: the search for the user, one per configured group (as
    # for the policy's groups), the compare-and-swap write.
    ops = s.world.directory.operations
    assert ops.count("Search") == 1 + 2 and ops.count("Modify") == 1 and len(ops) == 4

    bob_key = await s.world.oath("bob")
    reply = s.send("bob", PW + hotp(bob_key, 0))
    assert reply["Tunnel-Private-Group-Id:1"] == ["20"] and "Cisco-AVPair" not in reply
    assert len(login_ids(reply)) == 1 and login_ids(reply) != [login_id]


@pytest_twisted.ensureDeferred
async def test_a_membership_that_cannot_be_read_refuses_and_is_audited():
    """Attack: the quarantine group's membership cannot be read (a DN that names no group,
    an unreadable tokenGroups on AD); the user must not fall through to the next rule's VLAN."""
    s = Setup([nas(reply=RULES)], quarantine=False)
    key = await s.world.oath("alice")
    reply = s.send("alice", PW + hotp(key, 0))
    assert reply.code == pp.AccessReject
    assert set(reply.keys()) == {"Message-Authenticator"}
    (event,) = s.events
    assert event["outcome"] == "reject"
    assert event["reason"].startswith("authorization refused: radius.clients[0].reply[0]: "
                                      "the membership of cn=quarantine")
    assert event["login_id"]
    reply = s.send("alice", PW + hotp(key, 0))  # the code was spent all the same
    assert reply.code == pp.AccessReject and s.events[-1]["reason"] == "OTP already used"


@pytest_twisted.ensureDeferred
async def test_rejects_never_carry_a_reason():
    s = Setup([nas(reply=RULES, accept_message="Welcome")])
    key = await s.world.oath("alice")
    for name, password in (("alice", PW + "000000"), ("alice", "wrong" + hotp(key, 0)),
                           ("nobody", PW + "123456"), ("alice", PW)):
        reply = s.send(name, password, (33, b"proxy-1"))
        assert reply.code == pp.AccessReject
        assert set(reply.keys()) == {"Message-Authenticator", "Proxy-State"}
    reasons = [e["reason"] for e in s.events]
    assert len(reasons) == 4 and all(reasons) and all(e["login_id"] for e in s.events)
    assert len({e["login_id"] for e in s.events}) == 4


@pytest_twisted.ensureDeferred
async def test_challenge_step_two_gets_the_reply_the_challenge_none():
    s = Setup([nas(mode="challenge", reply=RULES)])
    key = await s.world.oath("alice")
    challenge = s.send("alice", PW)
    assert challenge.code == pp.AccessChallenge and "Class" not in challenge
    assert "Tunnel-Type:1" not in challenge
    reply = s.send("alice", hotp(key, 0), (24, challenge["State"][0]))
    assert reply.code == pp.AccessAccept and reply["Tunnel-Private-Group-Id:1"] == ["10"]
    (login_id,) = login_ids(reply)
    assert s.events[-1]["login_id"] == login_id and s.events[0]["login_id"] != login_id


@pytest_twisted.ensureDeferred
async def test_nas_without_rules_still_sends_class():
    s = Setup([nas()])
    key = await s.world.oath("alice")
    reply = s.send("alice", PW + hotp(key, 0))
    assert reply.code == pp.AccessAccept and "Reply-Message" not in reply
    assert reply["Class"] == [f"otpgate:{s.events[-1]['login_id']}".encode()]


@pytest_twisted.ensureDeferred
async def test_exempt_account_gets_the_unconditional_rules_only():
    s = Setup([nas(reply=RULES)], policy={"exempt_dns": ["uid=svc,ou=people,dc=x"]})
    s.world.directory.add_user("svc", "svc-pw")
    reply = s.send("uid=svc,ou=people,dc=x", "svc-pw")
    assert reply.code == pp.AccessAccept and reply["Tunnel-Private-Group-Id:1"] == ["20"]


def test_text_audit_lines_show_the_login_id(tmp_path: Path):
    from twisted.internet.task import Clock

    trail = AuditTrail(LoggingConfig(json=False, file=tmp_path / "a.log", flush_seconds=0),
                       Clock())
    trail.start()
    trail.record(outcome="accept", front_end="radius", user="alice", dn=None, client="192.0.2.1",
                 token="t", reason="ok", login_id="0f" * 12)
    trail.record(outcome="accept", front_end="ldap", user="bob", dn=None, client="192.0.2.1",
                 token="t", reason="ok")
    trail.stop()
    first, second = (tmp_path / "a.log").read_text().splitlines()
    assert first.endswith(f"reason='ok' login_id='{'0f' * 12}'")
    assert second.endswith("reason='ok'")
