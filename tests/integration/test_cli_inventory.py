"""The CLI's side of what the portal's inventory pages share with it: ``import --format
otpauth``, the OATH CSV user column that assigns on import, and ``unassign`` (the token goes
back to the inventory with its counter), on slapd and Samba AD."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from otpgate.otp.oath import hotp
from tests.integration.test_cli import Cli

BACKENDS = ["slapd-stock", "samba"]


def b32(key: bytes) -> str:
    return base64.b32encode(key).decode().rstrip("=")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_otpauth_import_user_column_and_unassign(backend: Any, tmp_path: Any, capsys: Any) -> None:
    cli = Cli(backend, tmp_path, capsys, directory={"inventory_dn": backend.inventory_dn()})
    tag = f"C{os.urandom(3).hex().upper()}"
    name, _dn = backend.new_user("cliuser")
    fob, app = os.urandom(20), os.urandom(20)
    uris = tmp_path / "uris.txt"
    uris.write_text(
        f"otpauth://hotp/ACME:{tag}-1?secret={b32(fob)}&counter=3&issuer=ACME\n"
        f"otpauth://totp/{tag}-2?secret={b32(app)}&period=30\n"
        f"otpauth://totp/{tag}-3?secret=short\n"
    )
    cli("import", str(uris), "--format", "otpauth", code=1)
    marked = (tmp_path / "Error_uris.txt").read_text().splitlines()
    assert marked[2].startswith("# ERROR line 3: secret is")
    (tmp_path / "Error_uris.txt").unlink()
    out = cli.json("import", str(uris), "--format", "otpauth", "--partial")
    assert sorted(out["imported"]) == [f"{tag}-1", f"{tag}-2"]
    # The user column assigns on import; the code before counter 3 is never accepted.
    csv = tmp_path / "assign.csv"
    csv.write_text(f"{tag}-4, {os.urandom(20).hex()}, hotp, 6, , {name}\n"
                   f"{tag}-5, {os.urandom(20).hex()}, hotp, 6, , nobody-{tag}\n")
    cli("import", str(csv), "--format", "oath-csv", code=1)
    assert "user 'nobody-" in (tmp_path / "Error_assign.csv").read_text()
    (tmp_path / "Error_assign.csv").unlink()
    csv.write_text(f"{tag}-4, {os.urandom(20).hex()}, hotp, 6, , {name}\n")
    out = cli.json("import", str(csv), "--format", "oath-csv")
    assert out["imported"] == [f"{tag}-4"]
    assert [(a["serial"], a["user"]) for a in out["assigned"]] == [(f"{tag}-4", name)]
    assert f"{tag}-4" not in {t["serial"] for t in cli.json("inventory")["tokens"]}
    cli("assign", f"{tag}-1", name)
    assert cli.test_auth(name, hotp(fob, 2)).returncode != 0  # counter 3 is the first
    assert cli.test_auth(name, hotp(fob, 3)).returncode == 0
    out = cli.json("unassign", name, f"{tag}-1")
    assert (out["serial"], out["last"]) == (f"{tag}-1", 3)
    cli("unassign", name, f"{tag}-1", code=1)
    listed = {t["serial"] for t in cli.json("inventory")["tokens"]}
    assert f"{tag}-1" in listed
    out = cli.json("unassign", name, f"{tag}-4")
    assert out["last"] == -1  # never used
    for n in (1, 2, 4):
        cli("delete", f"{tag}-{n}")


def test_import_checks_every_inventory_entry_past_the_size_limit(
    request: Any, tmp_path: Any, capsys: Any
) -> None:
    """The duplicate-key check reads the whole inventory, paged: a plain search stopped at
    slapd's sizelimit (500) and ldap3 handed out those 500 as if they were all, so a key
    already in stock past the 500th token was imported a second time.  Without a paged
    limit for the service account the import now fails rather than check half."""
    from tests.integration.backends import Backend
    from tests.servers import Slapd

    with Slapd(tmp_path / "slapd", paged_limit=False) as server:  # its own: limits change
        backend = Backend("slapd-stock", "openldap", server, tmp_path / "keyring.json")
        from otpgate.vault import keygen

        keygen(backend.keyring, "k1")
        cli = Cli(backend, tmp_path, capsys, directory={"inventory_dn": server.tokens_dn})
        keys = [os.urandom(20) for _ in range(520)]
        stock = tmp_path / "stock.csv"
        stock.write_text("".join(f"L{n:04d}, {k.hex()}\n" for n, k in enumerate(keys)))
        assert len(cli.json("import", str(stock), "--format", "oath-csv")["imported"]) == 520
        again = tmp_path / "again.csv"
        again.write_text(f"NEW1, {keys[519].hex()}\n")
        cli("import", str(again), "--format", "oath-csv", code=1)
        assert "4 sizeLimitExceeded" in cli.err  # refused, not checked against 500 of 520
        server.modify_config(
            "dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nadd: olcLimits\n"
            f'olcLimits: dn.exact="{server.service_dn}" size.prtotal=unlimited\n'
        )
        cli("import", str(again), "--format", "oath-csv", code=1)
        assert "already in the inventory as serial L0519" in (
            tmp_path / "Error_again.csv").read_text()
        assert len(cli.json("inventory")["tokens"]) == 520
