"""The shared slapo-otp anchor slapd (../shared/bench/anchor_slapd.sh), with `index objectClass eq`.

Every production OpenLDAP indexes objectClass (Debian's default config does).  Without it
back-mdb turns every subtree search into a scan of the whole database (it ORs
(objectClass=referral) into the filter): measured 4.5-10 ms of slapd CPU per user-name lookup
at 8,000 entries, which made a RADIUS login (User-Name → entry) cost 40x a DN bind.  slapo-otp's
binds name the DN and never search, so the index changes nothing for the anchor's own numbers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench"


def start_anchor(directory: Path, port: int, users: int) -> int:
    """Start the anchor slapd with ``users`` plain and slapo-otp users; returns its pid."""
    subprocess.run(
        ["bash", str(SHARED / "anchor_slapd.sh"), str(directory), str(port), str(users)],
        check=True,
        capture_output=True,
        text=True,
    )
    pid_file = directory / "slapd.pid"
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pid_file.exists() or Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the anchor slapd did not stop")
        time.sleep(0.05)
    conf = directory / "slapd.conf"
    text = conf.read_text()
    if "index uid eq\n" not in text:
        raise RuntimeError(f"{SHARED / 'anchor_slapd.sh'} changed: no 'index uid eq' line")
    conf.write_text(text.replace("index uid eq\n", "index uid eq\nindex objectClass eq\n"))
    subprocess.run(
        ["/usr/sbin/slapindex", "-q", "-f", str(conf)], check=True, capture_output=True, text=True
    )
    subprocess.run(
        ["/usr/sbin/slapd", "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/"],
        check=True,
        capture_output=True,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the anchor slapd did not start again")
        time.sleep(0.05)
    return int(pid_file.read_text())
