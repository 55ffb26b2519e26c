"""The admin CLI against real directories: every command, on slapd (stock and otpgate
schema) and Samba AD (the ``backend`` fixture).  Commands run in-process through
``otpgate.cli.main``; ``test-auth`` (Twisted reactor) runs in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from otpgate.cli import main
from otpgate.config import load_config
from otpgate.directory.records import StateChange
from otpgate.directory.sync import SyncDirectory, discover_pdc, open_store
from otpgate.otp.oath import hotp
from otpgate.otp.scratch import verify_scratch
from otpgate.tokens import TokenType
from otpgate.vault import Keyring, keygen
from tests.integration.backends import USER_PASSWORD
from tests.netutil import free_port
from tests.servers import SambaDC, ldif_entry, make_server_tls

REPO = Path(__file__).resolve().parents[2]
PSKC = REPO / "tests" / "data" / "pskc"
RFC_KEY = b"12345678901234567890"


def toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, doc: dict) -> Path:
    lines = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def inventory_dn(backend) -> str:
    return backend.inventory_dn()


class Cli:
    """Runs ``otpgate`` in-process with one config file."""

    def __init__(self, backend, tmp_path: Path, capsys, directory=None, keyring=None, **sections):
        self.backend = backend
        self.tmp = tmp_path
        self.capsys = capsys
        doc = {
            "directory": backend.directory_section(**(directory or {})),
            "vault": {"keyring": str(keyring or backend.keyring)},
            **sections,
        }
        self.config = write_config(tmp_path / f"otpgate-{os.urandom(3).hex()}.toml", doc)
        self.err = ""

    def __call__(self, *argv: str, code: int = 0) -> str:
        self.capsys.readouterr()
        got = main([*argv, "--config", str(self.config)])
        captured = self.capsys.readouterr()
        self.err = captured.err
        assert got == code, f"otpgate {' '.join(argv)} -> {got}\n{captured.out}\n{captured.err}"
        if code:
            assert captured.err.count("\n") == 1, captured.err  # one clear line
        return captured.out

    def json(self, *argv: str, code: int = 0):
        return json.loads(self(*argv, "--json", code=code))

    def store(self):
        config = load_config(self.config)
        return open_store(config.directory, Keyring.load(config.keyring))

    def test_auth(self, user: str, otp: str, password: str = USER_PASSWORD):
        secret = self.tmp / f"pw-{os.urandom(3).hex()}"
        secret.write_text(password)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "otpgate.cli",
                "test-auth",
                user,
                "--password-file",
                str(secret),
                "--otp",
                otp,
                "--config",
                str(self.config),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=REPO,
            check=False,
        )


def b32(key: bytes) -> str:
    return base64.b32encode(key).decode().rstrip("=")


def test_enroll_show_list_revoke_reset_and_test_auth(backend, tmp_path, capsys):
    cli = Cli(backend, tmp_path, capsys)
    name, dn = backend.new_user("cli")
    key = os.urandom(20)
    qr = tmp_path / "qr.png"
    doc = cli.json(
        "enroll", name, "--type", "hotp", "--secret", b32(key), "--label", "phone", "--qr", str(qr)
    )
    assert doc["dn"].lower() == dn.lower() and doc["replaced"] == []
    assert f"secret={b32(key)}" in doc["uri"] and doc["uri"].startswith("otpauth://hotp/otpgate:")
    scanned = subprocess.run(
        ["zbarimg", "--quiet", "--raw", str(qr)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert scanned == doc["uri"]
    hotp_id = doc["token"]["id"]

    shown = cli("show", name)
    assert "phone" in shown and "hotp" in shown and b32(key) not in shown and key.hex() not in shown
    # The seed is stored encrypted.
    raw = backend.state_values(dn, cli.store().config.seed.spec.name)
    assert raw and all(key.hex().encode() not in v and b32(key).encode() not in v for v in raw)

    # The real pipeline: right code accepted, the same code again refused.
    first = cli.test_auth(name, hotp(key, 0))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[ ok ] resolve" in first.stdout and "[ ok ] pipeline: accepted" in first.stdout
    again = cli.test_auth(name, hotp(key, 0))
    assert again.returncode == 1 and "[FAIL] pipeline: rejected" in again.stdout
    used = cli.json("show", name)["tokens"][0]
    assert used["last_counter"] == 0 and used["last_used"]

    # A new software token replaces the old one; --keep-existing adds one.
    doc = cli.json("enroll", name, "--no-qr")
    assert doc["replaced"] == [hotp_id] and doc["token"]["type"] == "totp"
    cli("enroll", name, "--type", "hotp", "--keep-existing", "--digits", "8")
    tokens = cli.json("show", name)["tokens"]
    assert sorted(t["type"] for t in tokens) == ["hotp", "totp"]
    assert name in [u["user"].lower() for u in cli.json("list")["users"]] or any(
        u["dn"].lower() == dn.lower() for u in cli.json("list")["users"]
    )

    capped = Cli(backend, tmp_path, capsys, otp={"max_tokens_per_user": 2})
    capped("enroll", name, "--keep-existing", code=1)
    assert "maximum is 2" in capped.err

    cli("revoke", name, code=1)
    assert "name one of" in cli.err
    out = cli.json("revoke", name, tokens[0]["id"])
    assert out["revoked"] == [tokens[0]["id"]]
    assert cli.json("reset", name)["revoked"] == [tokens[1]["id"]]
    assert cli.json("show", name)["tokens"] == []

    cli("show", name[:-1] + "*", code=1)  # a filter metacharacter is a literal, not a wildcard
    assert "no user" in cli.err


def test_resync_lockout_unlock_and_scratch(backend, tmp_path, capsys):
    cli = Cli(backend, tmp_path, capsys)
    name, _dn = backend.new_user("cli")
    key = os.urandom(20)
    cli("enroll", name, "--type", "hotp", "--secret", b32(key), "--no-qr")
    codes = [hotp(key, c) for c in (4000, 4001, 4002)]
    out = cli.json("resync", name, *codes)
    assert out["counter"] == 4002
    assert cli.json("show", name)["tokens"][0]["last_counter"] == 4002
    cli("resync", name, *codes, code=1)  # spent: only counters after 4002 are searched
    assert "not consecutive codes" in cli.err

    store = cli.store()
    try:
        user = store.resolve(name)
        store.update(
            user,
            lambda s: StateChange(
                None, used=replace(s.used, failures=0, locked_until=int(time.time()) + 600)
            ),
        )
    finally:
        store.directory.close()
    assert cli.json("show", name)["locked"] is True
    assert name.lower() in [u["user"].lower() for u in cli.json("list", "--locked")["users"]]
    assert cli.json("unlock", name)["was_locked"] is True
    assert cli.json("show", name)["locked"] is False

    card = tmp_path / "card.html"
    first = cli.json("scratch", name, "--count", "5", "--length", "6", "--card", str(card))
    assert len(first["codes"]) == 5 and all(len(c) == 6 for c in first["codes"])
    html = card.read_text()
    assert f"{first['codes'][0][:3]} {first['codes'][0][3:]}" in html
    assert card.stat().st_mode & 0o777 == 0o600
    second = cli.json("scratch", name, "--count", "3")
    tokens = cli.json("show", name)["tokens"]
    scratch = [t for t in tokens if t["type"] == "scratch"]
    assert len(scratch) == 1 and scratch[0]["scratch_remaining"] == 3
    store = cli.store()
    try:
        state = store.decode(store.resolve(name))
    finally:
        store.directory.close()
    stored = next(t for t in state.tokens if t.type is TokenType.SCRATCH).scratch
    assert verify_scratch(stored, second["codes"][0], frozenset()) == 0
    assert verify_scratch(stored, first["codes"][0], frozenset()) is None  # old list is gone


def test_import_inventory_rename_assign_delete(backend, tmp_path, capsys):
    inv = inventory_dn(backend)
    cli = Cli(backend, tmp_path, capsys, directory={"inventory_dn": inv})
    main(["delete", "987654321", "--config", str(cli.config)])  # left by an earlier run?
    pskc = tmp_path / "tokens.pskc"
    shutil.copy(PSKC / "rfc6030-figure7-pbkdf2.pskc", pskc)
    password = tmp_path / "pskc.pw"
    password.write_text("qwerty\n")
    out = cli.json("import", str(pskc), "--format", "pskc", "--password-file", str(password))
    assert out["imported"] == ["987654321"]
    listed = {t["serial"]: t for t in cli.json("inventory")["tokens"]}
    assert listed["987654321"]["type"] == "hotp" and listed["987654321"]["state"] == "available"
    # Importing it again: the serial exists, nothing is imported, the row is marked.
    cli("import", str(pskc), "--format", "pskc", "--password-file", str(password), code=1)
    assert "nothing was imported" in cli.err
    assert "already in the inventory" in (tmp_path / "Error_tokens.pskc").read_text()

    prefix = f"cli{os.urandom(3).hex()}"
    csv = tmp_path / "tokens.csv"
    csv.write_text(
        f"{prefix}-1, {os.urandom(20).hex()}\n"
        f"{prefix}-2, {os.urandom(20).hex()}, totp, 8, 60\n"
        f"{prefix}-3, not-hex\n"
    )
    cli("import", str(csv), "--format", "oath-csv", code=1)
    marked = (tmp_path / "Error_tokens.csv").read_text()
    assert marked.splitlines()[2].startswith("# ERROR line 3:")
    serials = {t["serial"] for t in cli.json("inventory")["tokens"]}
    assert not any(s.startswith(prefix) for s in serials)  # nothing half-imported
    cli("import", str(csv), "--format", "oath-csv", "--partial", code=1)  # never overwritten
    assert "Error_tokens.csv exists" in cli.err and "nothing was imported" in cli.err
    (tmp_path / "Error_tokens.csv").unlink()
    out = cli.json("import", str(csv), "--format", "oath-csv", "--partial")
    assert sorted(out["imported"]) == [f"{prefix}-1", f"{prefix}-2"]
    assert out["skipped"][0]["row"] == 3

    cli("rename", f"{prefix}-1", "key fob 1")
    labels = {t["serial"]: t.get("label", "") for t in cli.json("inventory")["tokens"]}
    assert labels[f"{prefix}-1"] == "key fob 1"

    name, _dn = backend.new_user("cli")
    assigned = cli.json("assign", "987654321", name)
    assert assigned["token"]["serial"] == "987654321" and assigned["token"]["digits"] == 8
    assert "987654321" not in {t["serial"] for t in cli.json("inventory")["tokens"]}
    result = cli.test_auth(name, hotp(RFC_KEY, 0, 8))
    assert result.returncode == 0, result.stdout + result.stderr
    cli("assign", "987654321", name, code=1)
    assert "not in the inventory" in cli.err

    for serial in (f"{prefix}-1", f"{prefix}-2"):
        cli("delete", serial)
    cli("delete", f"{prefix}-1", code=1)
    assert not any(t["serial"].startswith(prefix) for t in cli.json("inventory")["tokens"])


def _own_subtree(backend, tag: str) -> tuple[str, str, list[str]]:
    """An OU with two users and an inventory container of its own (rekey rewrites
    everything under base_dn: keep it away from the other tests' entries)."""
    users = [f"{tag}a", f"{tag}b"]
    if isinstance(backend.server, SambaDC):
        dc = backend.server
        ou, inv = f"OU={tag},{dc.base_dn}", f"OU={tag}-tokens,{dc.base_dn}"
        conn = backend.admin()
        try:
            assert conn.add(ou, ["top", "organizationalUnit"])
            assert conn.add(inv, ["top", "organizationalUnit"])
            assert conn.add(f"OU=state,{ou}", ["top", "organizationalUnit"])  # its own states
        finally:
            conn.unbind()
        for user in users:
            dc.create_user(user, USER_PASSWORD, container_dn=ou)
        return ou, inv, users
    s = backend.server
    ou, inv = f"ou={tag},{s.people_dn}", f"ou={tag},{s.tokens_dn}"
    records = [
        ldif_entry(ou, {"objectClass": "organizationalUnit", "ou": tag}),
        ldif_entry(inv, {"objectClass": "organizationalUnit", "ou": tag}),
    ]
    records += [
        ldif_entry(f"uid={u},{ou}", {"objectClass": "inetOrgPerson", "uid": u, "cn": u, "sn": u})
        for u in users
    ]
    s.add_ldif("\n".join(records))
    return ou, inv, users


def _remove_subtree(backend, *bases: str) -> None:
    """Delete what a test created (its values are under a key the other tests lack)."""
    conn = backend.admin()
    try:
        for base in bases:
            conn.search(base, "(objectClass=*)", attributes=["objectClass"])
            dns = [r["dn"] for r in conn.response if r.get("type") == "searchResEntry"]
            for dn in sorted(dns, key=lambda d: d.count(","), reverse=True):
                conn.delete(dn)
    finally:
        conn.unbind()


def test_rekey_is_resumable_and_retires_old_keys(backend, tmp_path, capsys):
    tag = f"rk{os.urandom(3).hex()}"
    ou, inv, users = _own_subtree(backend, tag)
    try:
        keyring = tmp_path / "keyring.json"
        shutil.copy(backend.keyring, keyring)
        os.chmod(keyring, 0o600)
        own = {"base_dn": ou, "inventory_dn": inv}
        if backend.is_ad:
            own["state_dn"] = f"OU=state,{ou}"
        cli = Cli(backend, tmp_path, capsys, directory=own, keyring=keyring)
        for user in users:
            cli("enroll", user, "--no-qr")
        csv = tmp_path / "rk.csv"
        csv.write_text(f"{tag}-t1, {os.urandom(20).hex()}\n")
        cli("import", str(csv), "--format", "oath-csv")
        first_key = Keyring.load(keyring).current

        keygen(keyring, "rotated")
        dry = cli.json("rekey", "--dry-run")
        assert (dry["rewritten"], dry["already_current"]) == (3, 0)
        assert dry["old_keys_still_used"] == [first_key]
        # An interrupted run (here: one user already rewritten by an ordinary write) resumes.
        cli("enroll", users[0], "--no-qr")
        dry = cli.json("rekey", "--dry-run")
        assert (dry["rewritten"], dry["already_current"]) == (2, 1)
        done = cli.json("rekey", "--retire")
        assert done["rewritten"] == 2 and done["retired"] == [first_key]
        assert done["old_keys_still_used"] == [] and done["failed"] == []
        ring = json.loads(keyring.read_text())
        assert list(ring["keys"]) == ["rotated"] and ring["current"] == "rotated"
        again = cli.json("rekey")
        assert again["rewritten"] == 0 and again["already_current"] == 3
        seed_attr = load_config(cli.config).directory.seed.spec.name
        store = cli.store()
        try:
            for user in users:
                entry = store.resolve(user)
                values = [entry.seed, *entry.tokens, *entry.used]
                assert all(
                    v.replace(b"\\24", b"$").startswith(b"v1.rotated.") or v[:1] == b"\xa1"
                    for v in values
                    if v
                ), values
                store.decode(entry)  # decrypts with the new key alone
                assert backend.state_values(entry.dn, seed_attr, load_config(cli.config))
        finally:
            store.directory.close()
        assert cli.json("inventory")["tokens"][0]["serial"] == f"{tag}-t1"
    finally:
        _remove_subtree(backend, ou, inv)


def test_doctor_checklist(backend, tmp_path, capsys):
    """The state in the users' own entries (on AD: the explicit opt-in)."""
    own = {"inventory_dn": inventory_dn(backend)}
    if backend.is_ad:
        own.update(state_dn="", allow_self_writable_state=True)
    cli = Cli(backend, tmp_path, capsys, directory=own)
    name, _dn = backend.new_user("doc")
    password = tmp_path / "user.pw"
    password.write_text(USER_PASSWORD)
    args = ("doctor", "--test-user", name, "--test-password-file", str(password))
    if backend.is_ad:
        # A default Samba AD: Authenticated Users read the attributes, users write their own.
        doc = cli.json(*args, code=1)
        failures = [c for c in doc["checks"] if c["status"] == "fail"]
        details = " ".join(f"{c['area']}: {c['detail']}" for c in failures)
        for attribute in ("postalAddress", "registeredAddress", "wWWHomePage"):
            assert f"AD ACL {attribute}" in details
        assert "readable by all Authenticated Users" in details
        assert f"ordinary user {name} can read it" in details
        assert "can write their own" in details
        assert all("apply-acl.sh" in c["fix"] for c in failures if "ACL" in c["area"])
        text = cli(*args, code=1)
        assert "[FAIL] AD ACL postalAddress" in text and "fix: run schema/ad/apply-acl.sh" in text
    else:
        doc = cli.json(*args)
        assert doc["ok"], json.dumps(doc, indent=1)
        statuses = {c["area"]: c["status"] for c in doc["checks"]}
        mapped = load_config(cli.config).directory
        for attribute in (mapped.seed.spec.name, mapped.tokens.spec.name, mapped.used.spec.name):
            assert statuses[f"user reads {attribute}"] == "ok"
            assert statuses[f"user writes {attribute}"] == "ok"
            assert statuses[f"service account reads {attribute}"] == "ok"
        assert any(c["area"].startswith("TLS") and "verified" in c["detail"] for c in doc["checks"])
    # The probes left nothing behind.
    store = cli.store()
    try:
        entry = store.resolve(name)
        assert entry.seed is None and entry.tokens == () and entry.used == ()
    finally:
        store.directory.close()


def test_doctor_checks_the_state_container(backend, tmp_path, capsys):
    """With [directory] state_dn the doctor probes the container: the service account
    creates, swaps, reads and deletes a probe entry; the test user cannot write there."""
    state_dn = backend.state_dn() if backend.is_ad else backend.server.state_dn
    cli = Cli(backend, tmp_path, capsys, directory={"state_dn": state_dn})
    name, _dn = backend.new_user("docc")
    password = tmp_path / "user.pw"
    password.write_text(USER_PASSWORD)
    doc = cli.json("doctor", "--test-user", name, "--test-password-file", str(password))
    assert doc["ok"], json.dumps(doc, indent=1)
    statuses = {c["area"]: c["status"] for c in doc["checks"]}
    for area in ("state container", "service account creates state entries",
                 "service account writes state entries", "service account reads state entries",
                 "user writes state entries", "user creates state entries"):
        assert statuses[area] == "ok", area
    assert not any(a.startswith("AD ACL") for a in statuses)  # users' own attributes: moot
    conn = backend.admin()
    try:
        conn.search(state_dn, "(cn=otpgate-doctor-*)", attributes=["cn"])
        assert not conn.entries  # the probe left nothing behind
    finally:
        conn.unbind()
    missing = Cli(backend, tmp_path, capsys, directory={"state_dn": f"ou=nowhere,{state_dn}"})
    failed = missing.json("doctor", code=1)
    (check,) = [c for c in failed["checks"] if c["area"] == "state container"]
    assert check["status"] == "fail" and "organizationalUnit" in check["fix"]


def test_failover_pinning_and_certificates(backend, tmp_path, capsys):
    section = backend.directory_section()
    scheme = "ldap" if section.get("start_tls") else "ldaps"
    dead = f"{scheme}://127.0.0.1:{free_port()}"
    name, _dn = backend.new_user("cli")

    nowhere = Cli(backend, tmp_path, capsys, directory={"urls": [dead]})
    nowhere("show", name, code=1)
    assert "no directory server answered" in nowhere.err

    several = {"urls": [dead, *section["urls"]]}
    if backend.is_ad:  # several DCs: OTP state is pinned (write_url is required), reads fail over
        several["write_url"] = section["urls"][0]
    failover = Cli(backend, tmp_path, capsys, directory=several)
    failover("enroll", name, "--no-qr")
    assert len(failover.json("show", name)["tokens"]) == 1

    pinned = Cli(backend, tmp_path, capsys, directory={"write_url": dead})
    pinned("enroll", name, "--no-qr", code=1)  # OTP state fails closed, no fallback
    assert "no directory server answered" in pinned.err

    other = make_server_tls(tmp_path / "other-ca", dns_names=["localhost"])
    untrusted = Cli(backend, tmp_path, capsys, directory={"ca_file": str(other.ca_file)})
    untrusted("show", name, code=1)
    doctor = untrusted.json("doctor", code=1)
    assert doctor["checks"][0]["status"] == "fail" and "CA file" in doctor["checks"][0]["fix"]

    # Plain ldap:// only to loopback, the gateway's rule: refused when the config is read.
    plain = Cli(
        backend, tmp_path, capsys, directory={"urls": ["ldap://192.0.2.1:389"], "start_tls": False}
    )
    plain("show", name, code=2)
    assert "[directory].urls" in plain.err and "start_tls = true" in plain.err
    if not backend.is_ad:  # to a loopback slapd it works (AD refuses simple binds without TLS)
        local = Cli(backend, tmp_path, capsys, directory={"start_tls": False})
        assert local.json("show", name)["dn"].lower() == _dn.lower()


def test_pdc_emulator_discovery_on_samba(samba_dc, request, tmp_path_factory):
    from tests.integration.backends import make_backend

    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    config = backend.config({"write_url": "discover"})
    directory = SyncDirectory(config.directory)
    try:
        url = discover_pdc(directory.read(), config.directory)
        # the DC asked is the PDC emulator itself: its configured URL is kept
        assert url == backend.server.ldaps_url
        assert backend.config().directory.write_url == "discover"  # the AD default
    finally:
        directory.close()


def test_sync_store_compare_and_swap_retries_a_lost_race(backend, tmp_path, capsys):
    cli = Cli(backend, tmp_path, capsys)
    name, _dn = backend.new_user("cas")
    cli("enroll", name, "--type", "hotp", "--no-qr")
    a, b = cli.store(), cli.store()
    try:
        stale = a.resolve(name)
        b.update(b.resolve(name), lambda s: StateChange(None, used=replace(s.used, failures=3)))
        seen = []

        def bump(state):
            seen.append(state.used.failures)
            return StateChange(None, used=replace(state.used, failures=state.used.failures + 1))

        a.update(stale, bump)
        # The first write was planned on the stale state and lost (16); the retry re-read.
        assert seen == [0, 3]
        assert a.decode(a.resolve(name)).used.failures == 4
    finally:
        a.directory.close()
        b.directory.close()
