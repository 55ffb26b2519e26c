"""Two Samba AD DCs (dc1 127.0.0.1, dc2 joined on 127.0.0.2) and two gateways on the ad
profile's default ``write_url = "discover"``: the AD version of test_replication.py.

The scenario (tests/integration/samba2_scenario.py) runs in network + PID namespaces of its
own, so the second loopback address and Samba's fixed ports stay off the host's network
and away from the session ``samba_dc`` fixture; it prints one JSON report. Anything that
cannot start (unshare, the namespace, a DC, the join, replication) makes this test fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RACES = 100
TIMEOUT = 420


@pytest.mark.samba
def test_two_dcs_pin_otp_state_to_the_pdc_emulator(tmp_path_factory: pytest.TempPathFactory):
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
    report = json.loads(lines[-1])
    print(json.dumps(report, indent=1))
    assert report["ok"], f"{report['error']}\n{stderr}"
    assert result.returncode == 0

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
