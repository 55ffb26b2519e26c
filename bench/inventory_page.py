#!/usr/bin/env python3
"""How fast the help desk's inventory page answers with a large inventory (loopback only).

Fills a throwaway slapd (the tests' ``tests/servers/slapd.py``: stock schema, the shipped
ACLs, ``index entryCSN eq``) with --tokens inventory entries, each an otpgate-encrypted
token bound to its own entryUUID (written offline with slapadd: minutes faster than adding
them one by one), and a help-desk member with a TOTP token.  The service account may read
any number of entries only with paged results (``size.prtotal=unlimited``; a plain search
stops at 500, as on a stock slapd).  Then runs the portal (``tests/browser/run_portal.py``,
the gateway's own code) in front of it, signs in and times:

* the first view, right after the portal started: it waits for the index, which the portal
  reads (paged) and decodes once, in the background, 2 s after its start;
* --pages page views back to back (pages sorted by serial, type and label, both directions,
  first, middle and last page), each reading and decrypting only its 50 rows;
* --spaced views a little over a second apart, so each also runs the delta read (entries
  changed since the last read, by entryCSN);
* --searches views with a search term (a scan of the index for a substring);

and reports milliseconds per page (median, 95th percentile, max) and the portal process's
CPU per request (/proc/<pid>/stat, its user + system time over the views).  It takes the
integration-test lock (/tmp/otpgate-integration.lock) for its whole run, as the tests do.

usage: bench/inventory_page.py [--tokens 100000] [--pages 60] [--spaced 10] [--searches 10]
Prints one JSON line and writes bench/results/inventory_page.json.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LOCK = Path("/tmp/otpgate-integration.lock")
PASSWORD = "Pa55-word!otp"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def integration_lock() -> Any:
    with open(LOCK, "a") as handle:
        print(f"waiting for {LOCK} ...", file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Backend:
    """What tests.browser.portal.run_portal needs of a backend."""

    def __init__(self, slapd: Any, keyring: Path, inventory_dn: str) -> None:
        self.slapd = slapd
        self.keyring = keyring
        self.inventory_dn = inventory_dn

    def directory_section(self, **overrides: Any) -> dict[str, Any]:
        s = self.slapd
        section = {
            "profile": "openldap", "urls": [s.url], "start_tls": True, "ca_file": str(s.ca_file),
            "base_dn": s.suffix, "bind_dn": s.service_dn, "bind_password": s.service_password,
            "timeout": 30, "inventory_dn": self.inventory_dn,
        }  # fmt: skip
        section.update(overrides)
        return section


def fill(slapd: Any, keyring: Path, tokens: int, work: Path) -> str:
    """slapadd the base tree, the help desk (a user and a group) and ``tokens`` entries."""
    from otpgate.config import parse_config
    from otpgate.directory.inventory import InventoryMapper
    from otpgate.tokens import Secret, Token, TokenType
    from otpgate.vault import Keyring
    from tests.servers.slapd import ldif_entry, ssha

    config = parse_config(
        {"directory": Backend(slapd, keyring, slapd.tokens_dn).directory_section(),
         "vault": {"keyring": str(keyring)}}, Path("/"))  # fmt: skip
    mapper = InventoryMapper(config.directory, Keyring.load(keyring))
    attribute = config.directory.inventory.spec.name
    desk = f"uid=desk,{slapd.people_dn}"
    path = work / "fill.ldif"
    with open(path, "w") as out:
        out.write(slapd._base_ldif() + "\n")
        out.write(ldif_entry(desk, {"objectClass": "inetOrgPerson", "uid": "desk", "cn": "desk",
                                    "sn": "desk", "userPassword": ssha(PASSWORD)}) + "\n")
        out.write(ldif_entry(f"cn=helpdesk,{slapd.groups_dn}",
                             {"objectClass": "groupOfNames", "cn": "helpdesk", "member": desk})
                  + "\n")
        kinds = (TokenType.HOTP, TokenType.TOTP, TokenType.HOTP)
        for n in range(tokens):
            serial = f"SN{n:07d}"
            entry_id = str(uuid.uuid4())
            token = Token(id=os.urandom(4).hex(), type=kinds[n % 3], created=1_700_000_000 + n,
                          serial=serial, label=f"fob {(n * 7919) % tokens:07d}")
            raw = mapper.encode(mapper.dn(serial), entry_id.encode(), token,
                                Secret(os.urandom(20)))
            out.write(f"dn: {mapper.dn(serial)}\nobjectClass: top\nobjectClass: organizationalRole\n"
                      f"cn: {serial}\nentryUUID: {entry_id}\n"
                      f"{attribute}:: {base64.b64encode(raw).decode()}\n\n")
    subprocess.run(["/usr/sbin/slapadd", "-q", "-f", str(slapd.conf_file), "-l", str(path)],
                   check=True, capture_output=True, timeout=900)
    path.unlink()
    return desk


def enroll_desk(backend: Backend, name: str) -> bytes:
    from otpgate.admin.enrollment import enroll_change, new_oath_token
    from otpgate.config import parse_config
    from otpgate.directory.sync import open_store
    from otpgate.tokens import TokenType
    from otpgate.vault import Keyring

    config = parse_config({"directory": backend.directory_section(),
                           "vault": {"keyring": str(backend.keyring)}}, Path("/"))
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        token, secret = new_oath_token(config.otp, TokenType.TOTP)
        store.update(store.resolve(name), lambda s: enroll_change(s, token, secret, 5))
    finally:
        store.directory.close()
    return secret.key


def timed(client: Any, pid: int, paths: list[str], pause: float = 0.0) -> dict[str, Any]:
    walls = []
    cpu_before = cpu_seconds(pid)
    for path in paths:
        if pause:
            time.sleep(pause)
        start = time.perf_counter()
        status, page = client.request("GET", path)
        walls.append((time.perf_counter() - start) * 1000)
        if status != 200 or 'id="inventory"' not in page:
            raise RuntimeError(f"GET {path}: {status} {page[:300]}")
    cpu = (cpu_seconds(pid) - cpu_before) * 1000 / len(paths)
    walls.sort()
    return {
        "views": len(paths),
        "ms_median": round(statistics.median(walls), 1),
        "ms_p95": round(walls[max(int(len(walls) * 0.95) - 1, 0)], 1),
        "ms_max": round(walls[-1], 1),
        "gateway_cpu_ms_per_request": round(cpu, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--pages", type=int, default=60)
    ap.add_argument("--spaced", type=int, default=10)
    ap.add_argument("--searches", type=int, default=10)
    args = ap.parse_args()
    if not 1 <= args.tokens <= 200_000:
        raise SystemExit("--tokens: 1 to 200,000 (the slapd's map is 256 MB)")

    from otpgate.otp.oath import totp
    from otpgate.vault import keygen
    from tests.browser.portal import WebClient, run_portal
    from tests.servers.slapd import Slapd

    result: dict[str, Any] = {"tokens": args.tokens}
    with integration_lock(), tempfile.TemporaryDirectory(prefix="otpgate-invbench-") as tmp:
        work = Path(tmp)
        keyring = work / "keyring.json"
        keygen(keyring, "k1")
        service = "cn=otpgate,ou=services,dc=example,dc=org"
        limits = (f'limits dn.exact="{service}" size.soft=500 size.hard=500 size.pr=500 '
                  "size.prtotal=unlimited\n")
        slapd = Slapd(work / "slapd", populate=False, extra_config=limits)
        slapd._prepare()  # config and TLS files, before slapadd writes the database
        start = time.perf_counter()
        desk = fill(slapd, keyring, args.tokens, work)
        result["fill_seconds"] = round(time.perf_counter() - start, 1)
        slapd.start()
        try:
            backend = Backend(slapd, keyring, slapd.tokens_dn)
            key = enroll_desk(backend, "desk")
            web = {"helpdesk_groups": [f"cn=helpdesk,{slapd.groups_dn}"]}
            run_dir = work / "portal"
            run_dir.mkdir()
            with run_portal(backend, run_dir, web) as portal:
                pid = portal.process.pid
                client = WebClient(portal)
                if client.sign_in("desk", PASSWORD, totp(key, time.time())) != 303:
                    raise RuntimeError(f"the help-desk member {desk} cannot sign in")
                # The portal reads the inventory into its index 2 s after it starts; a view
                # before that is done waits for it: the cold start.
                cpu_before = cpu_seconds(pid)
                first = timed(client, pid, ["/helpdesk/inventory"])
                result["first_view_after_start"] = {
                    "ms": first["ms_max"],
                    "gateway_cpu_ms_since_start": round((cpu_seconds(pid) - cpu_before) * 1000),
                }
                last = max((args.tokens + 49) // 50, 1)
                views = []
                for n in range(args.pages):
                    sort = ("serial", "type", "label")[n % 3]
                    direction = ("asc", "desc")[(n // 3) % 2]
                    page = (1, last // 2, last)[(n // 6) % 3]
                    views.append(f"/helpdesk/inventory?sort={sort}&dir={direction}&page={page}")
                result["pages"] = timed(client, pid, views)
                result["pages_with_delta_read"] = timed(client, pid, views[: args.spaced], 1.1)
                terms = [f"SN{(n * 104729) % args.tokens:07d}"[: 6 + n % 3] for n in
                         range(args.searches)]
                result["searches"] = timed(client, pid,
                                           [f"/helpdesk/inventory?q={t}" for t in terms])
                result["portal_rss_mib"] = round(
                    int(next(line.split()[1] for line in
                             Path(f"/proc/{pid}/status").read_text().splitlines()
                             if line.startswith("VmRSS:"))) / 1024, 1)
        finally:
            slapd.stop()
    line = json.dumps(result)
    print(line)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "inventory_page.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
