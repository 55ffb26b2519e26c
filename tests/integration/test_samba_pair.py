"""Two Samba AD DCs (dc1 127.0.0.1, dc2 joined on 127.0.0.2) and two gateways on the ad
profile's default ``write_url = "discover"``: the AD version of test_replication.py.

The scenario (tests/integration/samba2_scenario.py) runs in network + PID namespaces of its
own, so the second loopback address and Samba's fixed ports stay off the host's network
and away from the session ``samba_dc`` fixture; it prints one JSON report, which both tests
read (one provision and join for both). Anything that cannot start (unshare, the
namespace, a DC, the join, replication, the role transfer) makes the tests fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RACES = 100
TIMEOUT = 420


@pytest.fixture(scope="module")
def samba2_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # a short path: Samba's unix sockets below it must stay under 108 bytes
    workdir = tmp_path_factory.mktemp("samba2")
    env = {**os.environ, "OTPGATE_SAMBA2_RACES": str(RACES),
           "OTPGATE_SAMBA2_TIMEOUT": str(TIMEOUT)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.samba2_scenario", str(workdir)],
        cwd=ROOT, env=env, capture_output=True, timeout=TIMEOUT + 60, check=False,
        stdin=subprocess.DEVNULL,
    )
    stderr = result.stderr.decode(errors="replace")[-6000:]
    lines = result.stdout.decode(errors="replace").strip().splitlines()
    assert lines, f"no report (exit {result.returncode}):\n{stderr}"
    report: dict[str, Any] = json.loads(lines[-1])
    print(json.dumps(report, indent=1))
    report["stderr"] = stderr
    report["exit"] = result.returncode
    return report


@pytest.mark.samba
def test_two_dcs_pin_otp_state_to_the_pdc_emulator(samba2_report: dict[str, Any]):
    report = samba2_report
    assert report["error"] is None, f"{report['error']}\n{report['stderr']}"

    # both gateways found dc1, the PDC emulator: A by name from dc2, B as "this server"
    discovery = report["discovery"]
    assert discovery["A"]["write_urls"] == ["ldap://dc1.otpgate.test:389"]
    assert discovery["B"]["write_urls"] == ["ldap://127.0.0.1:389"]
    assert {d["peer"] for d in discovery.values()} == {"127.0.0.1"}
    # every code accepted exactly once through gateways reading different DCs
    assert report["race"]["accepted_once"] == RACES
    assert report["race"]["accepted_twice"] == 0
    assert report["race"]["other_reasons"] == []
    # dc1 down: fail closed fast, exempt binds go on; back: resumed, no restart
    outage = report["outage"]
    for gateway in "AB":
        assert outage[f"{gateway}_otp_fail_closed_s"] < 5
        assert outage[f"{gateway}_otp_resumed_s"] < 5
    assert report["total_s"] < TIMEOUT


@pytest.mark.samba
def test_a_pdc_role_moved_while_the_old_pdc_is_up_is_followed(samba2_report: dict[str, Any]):
    """Gateway A started on dc1 (the PDC emulator), the role transferred to dc2 with both
    DCs up, gateway B started after: both write to dc2, every raced code accepted once."""
    report = samba2_report
    assert report["error"] is None, f"steps 1-5 failed: {report['error']}"
    move = report.get("role_move")
    assert move is not None, "the role move did not run"
    assert move["error"] is None, f"{move['error']}\n{json.dumps(move, indent=1)}"
    assert move["A_before"]["write_peer"] == "127.0.0.1"  # A started on dc1
    for gateway in "AB":  # A found dc2 by itself, B from its start
        assert move[gateway]["write_peer"] == "127.0.0.2"
    assert any("role moved" in line for line in move["A"]["log"])
    assert move["race"]["accepted_once"] == RACES
    assert move["race"]["accepted_twice"] == 0
    assert move["race"]["other_reasons"] == []
    assert report["ok"] and report["exit"] == 0
