"""The admin flows behind ``otpgate import`` and ``otpgate rekey``, over in-memory stand-ins
for the directory (the real ones run in tests/integration/test_cli*.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.admin.imports import ImportRefused, import_tokens
from otpgate.admin.rekey import RetireRefused, rekey_pass, retire_after
from otpgate.config import OtpConfig, parse_config
from otpgate.directory.records import UserEntry
from otpgate.directory.state import StateMapper
from otpgate.errors import DirectoryError
from otpgate.importers.csvfiles import parse_oath_csv
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from otpgate.directory.drive import run_steps
from otpgate.directory.engine import Add, Delete, Search
from otpgate.directory.inventory import InventoryMapper
from otpgate.directory.records import Lookup
from tests.unit.memdir import MemoryDirectory
from tests.unit.test_pipeline import KEYRING, config


class Ticks:
    def __init__(self) -> None:
        self.total = -1
        self.done = 0
        self.finished = 0

    def __call__(self, total: int) -> Ticks:
        self.total = total
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n

    def finish(self) -> None:
        self.finished += 1


INVENTORY = "ou=inventory,dc=x"


class Inventory:
    """The import's inventory over the in-memory directory: adding the serials in
    ``refuse`` is refused by the directory (53), adding ``crash`` stops the run."""

    def __init__(self, refuse=(), crash=None) -> None:
        self.directory = MemoryDirectory()
        self.directory.entries[INVENTORY] = (INVENTORY, {"objectclass": [b"organizationalUnit"]})
        self.mapper = InventoryMapper(config(directory={"inventory_dn": INVENTORY}).directory, KEYRING)
        self.refuse = set(refuse)
        self.crash = crash
        self.deleted: list[str] = []

    @property
    def serials(self) -> list[str]:
        return [dn.split(",", 1)[0][3:] for dn, _ in self.directory.entries.values()
                if dn != INVENTORY]

    def entries(self):
        return [e for e in self.directory.search(Search(Lookup(
            INVENTORY, 2, "(objectClass=*)", user_filter=False), self.mapper.attributes))]

    def run(self, step):
        return run_steps(step, self.perform)

    def perform(self, op):
        if isinstance(op, Add):
            serial = op.attributes["cn"][0].decode()
            if serial == self.crash:
                raise KeyboardInterrupt
            if serial in self.refuse:
                return 53, f"serial {serial} refused"
        if isinstance(op, Delete):
            self.deleted.append(op.dn.split(",", 1)[0][3:])
        return self.directory.perform(op)


def _csv(tmp_path: Path, *lines: str) -> tuple[Path, bytes]:
    path = tmp_path / "tokens.csv"
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(data)
    return path, data


def _run(inventory, path, data, partial=False, dry_run=False, ticks=None):
    return import_tokens(
        inventory,
        parse_oath_csv(data.decode()),
        path,
        data,
        partial=partial,
        dry_run=dry_run,
        progress=ticks or Ticks(),
    )


def test_import_adds_every_row_and_leaves_no_error_file(tmp_path):
    path, data = _csv(tmp_path, f"a1, {os.urandom(20).hex()}", f"a2, {os.urandom(20).hex()}")
    inventory, ticks = Inventory(), Ticks()
    outcome = _run(inventory, path, data, partial=True, ticks=ticks)
    assert outcome.imported == inventory.serials == ["a1", "a2"]
    assert not outcome.result.problems and (ticks.total, ticks.done, ticks.finished) == (2, 2, 1)
    assert outcome.error_path == tmp_path / "Error_tokens.csv"
    assert not outcome.error_path.exists()  # made before the import, removed: no problem


def test_a_problem_row_imports_nothing_and_is_marked_in_a_0600_error_file(tmp_path):
    path, data = _csv(tmp_path, f"b1, {os.urandom(20).hex()}", "b2, not-hex")
    inventory = Inventory()
    with pytest.raises(ImportRefused, match=r"1 of 2 row.* nothing was imported"):
        _run(inventory, path, data)
    assert inventory.serials == []
    error_file = tmp_path / "Error_tokens.csv"
    assert error_file.stat().st_mode & 0o777 == 0o600
    assert "# ERROR line 2:" in error_file.read_text()


def test_dry_run_adds_nothing_and_writes_no_file(tmp_path):
    path, data = _csv(tmp_path, f"c1, {os.urandom(20).hex()}", "c2, not-hex")
    inventory = Inventory()
    outcome = _run(inventory, path, data, partial=True, dry_run=True)
    assert outcome.imported == [] and inventory.serials == []
    assert [t.serial for t in outcome.result.tokens] == ["c1"]
    assert len(outcome.result.problems) == 1 and not outcome.error_path.exists()


def test_partial_reports_rows_the_directory_refused(tmp_path):
    path, data = _csv(tmp_path, f"d1, {os.urandom(20).hex()}", f"d2, {os.urandom(20).hex()}")
    inventory = Inventory(refuse={"d1"})
    outcome = _run(inventory, path, data, partial=True)
    assert outcome.imported == ["d2"]
    assert [(p.row, p.message) for p in outcome.result.problems] == [
        (1, f"cannot add cn=d1,{INVENTORY}: 53 serial d1 refused")]
    assert "serial d1 refused" in outcome.error_path.read_text()


@pytest.mark.parametrize("crash", [None, "e3"])
def test_a_failure_half_way_removes_the_rows_already_added(tmp_path, crash):
    path, data = _csv(tmp_path, *(f"e{i}, {os.urandom(20).hex()}" for i in (1, 2, 3)))
    inventory = Inventory(refuse=set() if crash else {"e3"}, crash=crash)
    ticks = Ticks()
    with pytest.raises(KeyboardInterrupt if crash else DirectoryError):
        _run(inventory, path, data, ticks=ticks)
    assert inventory.serials == [] and inventory.deleted == ["e1", "e2"]
    assert ticks.finished == 1


def test_an_error_file_in_the_way_refuses_before_importing(tmp_path):
    path, data = _csv(tmp_path, f"f1, {os.urandom(20).hex()}")
    (tmp_path / "Error_tokens.csv").symlink_to(tmp_path / "elsewhere")
    inventory = Inventory()
    with pytest.raises(ImportRefused, match=r"exists .or is a symlink.*nothing was imported"):
        _run(inventory, path, data, partial=True)
    assert inventory.serials == [] and not (tmp_path / "elsewhere").exists()


# -- rekey -------------------------------------------------------------------------------


def _mapper(keyring: Keyring) -> StateMapper:
    config = parse_config(
        {
            "directory": {
                "profile": "openldap",
                "urls": ["ldap://127.0.0.1:1"],
                "base_dn": "dc=x",
                "bind_dn": "cn=s,dc=x",
                "bind_password": "pw",
            },
            "vault": {"keyring": "k.json"},
        },
        Path("/"),
    )
    return StateMapper(config.directory, keyring)


def _enrolled(mapper: StateMapper, dn: str) -> UserEntry:
    """A user entry as ``mapper`` writes it after an enrollment."""
    user = UserEntry(dn, dn.encode(), used=(b'{"u":{},"v":1}',))
    state = mapper.decode(user)
    token, secret = new_oath_token(OtpConfig(), TokenType.TOTP)
    planned = mapper.plan(user, state, enroll_change(state, token, secret, 5))
    adds = {m.attribute: m.values for m in planned if m.op == 0}
    seed, tokens, used = (mapper.seed_codec, mapper.tokens_codec, mapper.used_codec)
    return UserEntry(
        dn,
        user.entry_id,
        seed=adds[seed.spec.name][0],
        tokens=adds[tokens.spec.name],
        used=adds[used.spec.name],
    )


class Store:
    def __init__(self, mapper: StateMapper, users, refuse=()) -> None:
        self.mapper = mapper
        self.users = users
        self.refuse = set(refuse)
        self.rewritten: list[str] = []

    def users_with_state(self):
        return iter(self.users)

    def update(self, user, change):
        if user.dn in self.refuse:
            raise DirectoryError(f"{user.dn}: busy")
        self.rewritten.append(user.dn)
        return change(self.mapper.decode(user)).result, user


def test_rekey_pass_counts_rewrites_and_reports_what_it_could_not():
    keys = {"k1": b"1" * 32, "k2": b"2" * 32}
    old, new = _mapper(Keyring(keys, "k1")), _mapper(Keyring(keys, "k2"))
    users = [
        _enrolled(old, "uid=a,dc=x"),
        _enrolled(old, "uid=b,dc=x"),
        _enrolled(new, "uid=c,dc=x"),
        UserEntry("uid=d,dc=x", b"d", seed=b"12 Main St$Springfield"),  # not otpgate's
        ("uid=e,dc=x", DirectoryError("unreadable")),
    ]
    store, ticks = Store(new, users, refuse={"uid=b,dc=x"}), Ticks()
    dry = rekey_pass(store.users_with_state, store, None, "k2", True, ticks)
    assert (dry.scanned, dry.rewritten, dry.current) == (3, 2, 1) and store.rewritten == []
    assert dry.failed == [("uid=e,dc=x", "unreadable")] and dry.old_keys == {"k1"}
    assert (ticks.total, ticks.done, ticks.finished) == (5, 5, 1)

    report = rekey_pass(store.users_with_state, store, None, "k2", False, Ticks())
    assert store.rewritten == ["uid=a,dc=x"]
    assert (report.scanned, report.rewritten, report.current) == (3, 1, 1)
    assert report.failed == [("uid=b,dc=x", "uid=b,dc=x: busy"), ("uid=e,dc=x", "unreadable")]
    with pytest.raises(RetireRefused, match=r"2 value.s. could not be rewritten"):
        retire_after(report, Path("/nonexistent/keyring.json"), "k2", keys)
    report.failed.clear()
    with pytest.raises(RetireRefused, match=r"keys \['k1'\] are still in use"):
        retire_after(report, Path("/nonexistent/keyring.json"), "k2", keys)
