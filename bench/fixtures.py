"""What both benchmarks set up and measure the same way: the anchor slapd, otpgate's users,
keyring and enrollment, the shared LDAP load client, CPU accounting.

The anchor slapd is ../shared/bench/anchor_slapd.sh's, with `index objectClass eq` added.
Every production OpenLDAP indexes objectClass (Debian's default config does).  Without it
back-mdb turns every subtree search into a scan of the whole database (it ORs
(objectClass=referral) into the filter): measured 4.5-10 ms of slapd CPU per user-name lookup
at 8,000 entries, which made a RADIUS login (User-Name → entry) cost 40x a DN bind.  slapo-otp's
binds name the DN and never search, so the index changes nothing for the anchor's own numbers.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
BIN = Path(sys.executable).parent
SUFFIX = "dc=example,dc=org"
ADMIN = ("cn=admin," + SUFFIX, "secret")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


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


def stop_anchor(directory: Path) -> None:
    pid = directory / "slapd.pid"
    if pid.exists():
        os.kill(int(pid.read_text()), signal.SIGTERM)
        time.sleep(0.5)


def add_otpgate_users(work: Path, port: int, count: int) -> list[dict]:
    """``count`` users under ou=otp (uid=ogK, password pwK), each with a fresh HOTP key for
    otpgate; written to ``work/og.json`` for enroll() and the load clients."""
    users = []
    ldif = [f"dn: ou=otp,{SUFFIX}\nobjectClass: organizationalUnit\nou: otp\n"]
    for k in range(count):
        dn = f"uid=og{k},ou=otp,{SUFFIX}"
        ldif.append(
            f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: og{k}\ncn: og{k}\nsn: og\n"
            f"userPassword: pw{k}\n"
        )
        users.append(
            {
                "name": f"og{k}",
                "dn": dn,
                "password": f"pw{k}",
                "secret_hex": os.urandom(20).hex(),
                "counter": 0,
            }
        )
    subprocess.run(
        ["ldapadd", "-x", "-H", f"ldap://127.0.0.1:{port}", "-D", ADMIN[0], "-w", ADMIN[1]],
        input="\n".join(ldif),
        text=True,
        check=True,
        capture_output=True,
    )
    (work / "og.json").write_text(json.dumps(users))
    return users


def directory_sections(work: Path, slapd_port: int) -> str:
    """[directory] and [vault] of an otpgate config on the anchor slapd (makes the keyring)."""
    subprocess.run(
        [str(BIN / "otpgate"), "keygen", str(work / "keyring.json"), "--key-id", "bench"],
        check=True,
        capture_output=True,
    )
    return f"""
[directory]
profile = "openldap"
urls = ["ldap://127.0.0.1:{slapd_port}"]
base_dn = "{SUFFIX}"
bind_dn = "{ADMIN[0]}"
bind_password = "{ADMIN[1]}"
# The anchor slapd runs OpenLDAP's default access rule (no rule: everybody reads, only the
# rootdn writes), so users cannot write their state; it has no cn=config database for the
# gateway to prove that from, so the bench states the site's choice.
allow_self_writable_state = true
[vault]
keyring = "keyring.json"
"""


def enroll(config: Path, users_file: Path, kind: str = "hotp") -> None:
    """Give each user of ``users_file`` an otpgate token (``kind``: hotp or totp) with its key,
    in a subprocess (twistd's task.react exits the process it runs in)."""
    subprocess.run(
        [sys.executable, "-m", "bench.fixtures", "--enroll", str(config), str(users_file), kind],
        cwd=ROOT,
        check=True,
    )


def each_user(
    config_path: Path,
    users: list[dict],
    one: Callable[[Any, Any, dict], Awaitable[None]],
    then: Callable[[], None] | None = None,
) -> None:
    """``one(gateway, config, user)`` for every user, 32 at a time over the pool's
    connections, then ``then()``; under the Twisted reactor (task.react exits the process
    it runs in: call this in a subprocess)."""
    from twisted.internet import defer, task

    from otpgate.config import load_config
    from otpgate.service import Gateway
    from otpgate.vault import Keyring

    async def run(reactor) -> None:
        config = load_config(config_path)
        gw = Gateway(config, Keyring.load(config.keyring), reactor)
        try:
            for i in range(0, len(users), 32):
                await defer.gatherResults(
                    [defer.ensureDeferred(one(gw, config, u)) for u in users[i : i + 32]],
                    consumeErrors=True,
                )
        finally:
            gw.close()
        if then is not None:
            then()

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))  # exits the process


def _enroll(config_path: Path, users: list[dict], kind: str) -> None:
    from otpgate.admin.enrollment import enroll_change, new_oath_token
    from otpgate.tokens import TokenType

    async def one(gw: Any, config: Any, u: dict) -> None:
        entry = await gw.store.resolve(u["dn"])
        token, secret = new_oath_token(
            config.otp, TokenType(kind), key=bytes.fromhex(u["secret_hex"])
        )
        await gw.store.update(entry, lambda s, t=token, k=secret: enroll_change(s, t, k, 5))

    each_user(config_path, users, one)


def ldap_load(
    port: int,
    users: Path,
    mode: str,
    conc: int,
    secs: float,
    pids: dict[str, int],
    nice: Sequence[str] = (),
) -> dict:
    """../shared/bench/ldapbind_load.py against ``port``; adds CPU µs per bind of ``pids``
    and of the load client itself (``cpu_us_client``)."""
    return shared_load(
        [
            *nice,
            sys.executable,
            str(SHARED / "ldapbind_load.py"),
            "--port",
            str(port),
            "--users",
            str(users),
            "--mode",
            mode,
            "--conc",
            str(conc),
            "--secs",
            str(secs),
            "--state-out",
            str(users),
        ],
        secs,
        pids,
    )


def shared_load(argv: Sequence[str], secs: float, pids: dict[str, int]) -> dict:
    """Run one of ../shared/bench's load clients (prints one JSON line with ``ok``/``fail``);
    adds the CPU µs per operation of each of ``pids`` and of the client (``cpu_us_client``)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        list(argv), check=True, capture_output=True, text=True, timeout=secs + 120
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict = json.loads(out.strip().splitlines()[-1])
    done = max(1, sum(result.get(k, 0) for k in ("ok", "fail", "reject", "timeout")))
    for name, pid in pids.items():
        result[f"cpu_us_{name}"] = round((cpu_seconds(pid) - before[name]) / done * 1e6)
    client = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    result["cpu_us_client"] = round(client / done * 1e6)
    return result


def combine_rounds(each: list[dict]) -> dict:
    """One row from a target's rounds: sums, CPU weighted by operations, median latencies."""
    done = [max(1, sum(r.get(k, 0) for k in ("ok", "fail", "reject", "timeout"))) for r in each]
    summed = ("ok", "fail", "reject", "timeout", "reused", "secs")
    row: dict = {k: sum(r[k] for r in each) for k in summed if k in each[0]}
    row["rate"] = round(sum(r["rate"] * r["secs"] for r in each) / max(row["secs"], 1e-9), 1)
    if "done_rate" in each[0]:
        row["done_rate"] = round(sum(r["done_rate"] * r["secs"] for r in each)
                                 / max(row["secs"], 1e-9), 1)
    for key in each[0]:
        if key.startswith("cpu_us_"):
            row[key] = round(sum(r[key] * n for r, n in zip(each, done, strict=True)) / sum(done))
        elif key in ("p50_ms", "p99_ms"):
            row[key] = round(statistics.median(r[key] for r in each), 2)
        elif key == "note" and any(r.get("note") for r in each):
            row["note"] = "; ".join(r["note"] for r in each if r.get("note"))
    row["rounds"] = [{k: r.get(k) for k in ("rate", "p99_ms")} for r in each]
    return row


if __name__ == "__main__" and sys.argv[1:2] == ["--enroll"]:
    _enroll(Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()), sys.argv[4])
