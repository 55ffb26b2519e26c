"""``otpgate census`` as an admin runs it: the real CLI in a subprocess over a rotated audit
log (``audit.log``, ``audit.log.1``, ``audit.log.2.gz``) of several simulated days.  Two
services bind from fixed addresses, a person types codes from varied addresses in office
hours, a person without a token binds through a report-only listener.  The suggested
exemptions are read back by otpgate's own config parser and decided by its policy.  Then a
real gateway on slapd writes its own JSON audit file, and the census reads that."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from otpgate.auth.exemptconfig import parse_exemptions
from otpgate.auth.policy import Policy
from otpgate.auth.requests import Channel
from otpgate.census import NO_TOKEN, READY, SERVICE
from otpgate.config import PolicyConfig
from otpgate.configfile import Section

T0 = 1796601600.0  # 2026-12-07T00:00:00Z
DAY = 86400.0
BASE = "dc=example,dc=org"
BACKUP = f"uid=svc-backup,ou=services,{BASE}"
PRINT = f"uid=svc-print,ou=services,{BASE}"
ALICE = f"uid=alice,ou=people,{BASE}"
BOB = f"uid=bob,ou=people,{BASE}"


def _event(t: float, user: str, dn: str, client: str, **kw: Any) -> dict[str, Any]:
    return {
        "time": round(t, 3), "event": "auth", "outcome": "accept", "front_end": "ldap",
        "user": user, "dn": dn, "client": client, "token": None,
        "reason": "password accepted", "channel": "apps", "policy": "otp", **kw,
    }  # fmt: skip


def generated_log(days: int = 3) -> list[str]:
    """A few thousand JSON audit lines in time order, with twistd noise in between."""
    rnd = random.Random(7)
    events = []
    for minute in range(days * 24 * 60):  # svc-backup: every minute, from one host
        events.append(_event(T0 + minute * 60 + rnd.random(), "svc-backup", BACKUP, "192.0.2.10"))
    for i in range(days * 24 * 4):  # svc-print: every 15 minutes, from an IPv6 host
        events.append(_event(T0 + i * 900 + 3, "svc-print", PRINT, "2001:db8::7"))
    for day in range(days):  # alice: codes, from desks, VPN and home, office hours
        for _ in range(12):
            t = T0 + day * DAY + 8 * 3600 + rnd.random() * 9 * 3600
            client = rnd.choice(["10.1.0.5", "10.1.3.9", "10.8.0.44", "198.51.100.23"])
            events.append(_event(t, "alice", ALICE, client, token="t-1", enrolled=True))
    for day in range(days):  # bob: no token, through the report-only listener
        for _ in range(6):
            t = T0 + day * DAY + 9 * 3600 + rnd.random() * 7 * 3600
            events.append(_event(
                t, "bob", BOB, "10.1.2.3", enrolled=False, report_only=True, channel="rollout",
                reason="report-only: would refuse: no token enrolled",
            ))  # fmt: skip
    events.sort(key=lambda e: e["time"])
    lines = [json.dumps(e) + "\n" for e in events]
    for i in range(0, len(lines), 500):
        lines.insert(i, "2026-12-07T00:00:00+0000 [-] twistd: a line that is no audit event\n")
    return lines


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("census")
    lines = generated_log()
    third = len(lines) // 3
    (root / "audit.log.2.gz").write_bytes(gzip.compress("".join(lines[:third]).encode()))
    (root / "audit.log.1").write_text("".join(lines[third : 2 * third]))
    (root / "audit.log").write_text("".join(lines[2 * third :]) + '{"time": 1, "event": "au\n')
    return root


def census(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "otpgate.cli", "census", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


def policy_of(toml: str) -> Policy:
    doc = tomllib.loads(toml)
    return Policy(PolicyConfig(exemptions=parse_exemptions(Section(doc["policy"], "policy"))))


def needs_code(policy: Policy, dn: str, client: str) -> bool:
    return policy.decide(dn, (), client, Channel("ldap", name="apps"), T0 + 10 * DAY).needs_otp


def test_json_over_the_rotated_files(logs: Path) -> None:
    done = census(str(logs / "audit.log"), "--rotated", "--json")
    doc = json.loads(done.stdout)
    assert doc["files"] == [str(logs / n) for n in ("audit.log.2.gz", "audit.log.1", "audit.log")]
    assert doc["malformed"] == 1 and "1 line(s) looked like audit events" in done.stderr
    rows = {r["dn"]: r for r in doc["accounts"]}
    assert doc["events"] == sum(r["binds"] for r in rows.values()) == 3 * (1440 + 96 + 12 + 6)
    assert rows[BACKUP]["verdict"] == rows[PRINT]["verdict"] == SERVICE
    assert rows[BACKUP]["clients"] == ["192.0.2.10"] and rows[BACKUP]["binds"] == 3 * 1440
    assert rows[ALICE]["verdict"] == READY and rows[ALICE]["codes"] == 36
    assert rows[BOB]["verdict"] == NO_TOKEN and rows[BOB]["would_refuse"] == 18
    assert [r["dn"] for r in doc["accounts"]] == [BACKUP, PRINT, BOB, ALICE]
    assert rows[BACKUP]["first_seen"].startswith("2026-12-07T00:00:0")


def test_table_csv_and_only(logs: Path) -> None:
    table = census(str(logs / "audit.log"), "--rotated").stdout
    header, *lines = table.splitlines()
    assert header.split()[:4] == ["account", "binds", "refused", "codes"]
    assert lines[0].startswith(BACKUP) and lines[0].endswith(SERVICE)
    assert "[[policy.exempt]]" in table  # the suggestion follows the table
    rows = list(csv.DictReader(io.StringIO(census(str(logs / "audit.log"), "--rotated",
                                                  "--csv").stdout)))  # fmt: skip
    assert {r["dn"]: r["verdict"] for r in rows}[ALICE] == READY
    only = census(str(logs / "audit.log"), "--rotated", "--json", "--only", "service").stdout
    assert {r["dn"] for r in json.loads(only)["accounts"]} == {BACKUP, PRINT}
    no_token = census(str(logs / "audit.log"), "--rotated", "--json", "--only", "would-refuse")
    assert {r["dn"] for r in json.loads(no_token.stdout)["accounts"]} == {BOB, BACKUP, PRINT}


def test_suggestion_parses_and_exempts_only_the_services_from_their_hosts(logs: Path) -> None:
    block = census(str(logs / "audit.log"), "--rotated", "--suggest").stdout
    assert 'pattern = "uid=svc-*,ou=services,dc=example,dc=org"' in block
    assert 'networks = ["192.0.2.10/32", "2001:db8::7/128"]' in block
    assert "# until = " in block and "alice" not in block and "bob" not in block
    policy = policy_of(block)
    assert not needs_code(policy, BACKUP, "192.0.2.10")
    assert needs_code(policy, BACKUP, "192.0.2.99")
    assert not needs_code(policy, PRINT, "2001:db8::7")
    assert needs_code(policy, ALICE, "10.1.0.5") and needs_code(policy, BOB, "192.0.2.10")


def test_missing_file_is_a_clear_error(logs: Path) -> None:
    done = census(str(logs / "nope.log"), check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"otpgate census: cannot read {logs / 'nope.log'}: No such file or directory"
    cut = logs / "cut.log.gz"
    cut.write_bytes((logs / "audit.log.2.gz").read_bytes()[:-100])
    done = census(str(cut), check=False)
    assert done.returncode == 2 and "cut.log.gz" in done.stderr
    assert "Traceback" not in done.stderr


# -- the audit file a real gateway writes ------------------------------------------------------


@pytest.mark.parametrize("backend", ["slapd-stock"], indirect=True)
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
@pytest_twisted.ensureDeferred
async def test_the_audit_file_of_a_real_gateway(backend, tmp_path, as_json):
    from otpgate.otp.oath import hotp
    from tests.integration.test_rollout_report_only import PW, Listeners

    path = tmp_path / "audit.log"
    logging = {"file": str(path), "json": as_json, "flush_seconds": 0}
    ways = Listeners(backend, tmp_path, logging=logging)
    ways.gateway.audit.start()
    try:
        _n, svc = backend.new_user("svccensus")
        name, person = backend.new_user("percensus")
        key = await ways.enroll(name)
        for _ in range(12):  # no token: the report-only listener takes the password alone
            assert await ways.bind(ways.report, svc, PW) == 0
        assert await ways.bind(ways.enforced, person, PW + hotp(key, 0)) == 0
        assert await ways.bind(ways.enforced, person, PW) == 49  # no code: refused
        assert await ways.bind(ways.enforced, svc, "wrong") == 49
    finally:
        await ways.stop()
    doc = json.loads(census(str(path), "--json").stdout)
    assert (doc["events"], doc["malformed"]) == (15, 0)
    rows = {r["dn"]: r for r in doc["accounts"]}
    s, p = rows[svc], rows[person]
    assert (s["binds"], s["accepted"], s["refused"], s["would_refuse"]) == (13, 12, 1, 12)
    assert s["enrolled"] is False and s["policy"] == "otp" and s["codes"] == 0
    assert s["clients"] == ["127.0.0.1"] and "rollout" in s["channels"]
    assert s["verdict"] == NO_TOKEN  # twelve binds in a second or two: no rhythm to judge
    assert (p["codes"], p["accepted"], p["refused"], p["enrolled"]) == (1, 1, 1, True)
    assert p["verdict"] == READY
