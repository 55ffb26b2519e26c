"""Self-service hardware tokens in the portal against slapd and Samba AD (not run on Windows
AD; Samba AD is the test server): tokens imported with ``otpgate import`` (an OATH CSV, a
Yubico CSV) are claimed in Chromium with codes from ``oathtool`` and an OTP from
``ykgenerate``, then used through the LDAP proxy of the same ``twistd otpgate``; two claims
of one serial at once; wrong codes, unknown and taken serials counting towards lockout with
one answer; resynchronisation and renaming.  Screenshots (``OTPGATE_SCREENSHOTS=1``, slapd)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from otpgate.cli import main as otpgate_cli
from otpgate.otp.yubico import modhex_encode
from otpgate.web.tokenpages import ANSWER_SECONDS, UNAVAILABLE_TEXT
from tests.browser.portal import WebClient, browser, run_portal, write_config
from tests.integration.backends import USER_PASSWORD
from tests.integration.test_web_browser import code, enroll_directly, shoot, sign_in
from tests.netutil import free_port

PW = USER_PASSWORD


def oathtool(key_hex: str, counter: int, count: int = 1) -> list[str]:
    out = subprocess.run(
        ["oathtool", "--hotp", "-c", str(counter), "-w", str(count - 1), key_hex],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    codes = out.split()
    assert len(codes) == count
    return codes


def ykgenerate(key: bytes, uid: bytes, use: int, session: int) -> str:
    out = subprocess.run(
        ["ykgenerate", key.hex(), uid.hex(), f"{use:04x}", "1234", "56", f"{session:02x}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert len(out) == 32
    return out


def import_tokens(backend: Any, tmp: Path, text: str, fmt: str) -> None:
    """``otpgate import FILE --format FMT`` into the backend's inventory."""
    csv = tmp / f"tokens-{os.urandom(3).hex()}.csv"
    csv.write_text(text)
    config = write_config(tmp / f"cli-{os.urandom(3).hex()}.toml", {
        "directory": backend.directory_section(inventory_dn=backend.inventory_dn()),
        "vault": {"keyring": str(backend.keyring)},
    })  # fmt: skip
    assert otpgate_cli(["import", str(csv), "--format", fmt, "--config", str(config)]) == 0


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}{os.urandom(3).hex()}"


def ldap_bind(port: int, dn: str, password: str) -> bool:
    import ldap3

    server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=dn, password=password, raise_exceptions=False)
    ok = bool(conn.bind())
    conn.unbind()
    return ok


def whoami(port: int, dn: str, password: str) -> int:
    env = {**os.environ, "LDAPCONF": "/dev/null", "LDAPRC": "/nonexistent-otpgate-ldaprc"}
    return subprocess.run(
        ["ldapwhoami", "-x", "-H", f"ldap://127.0.0.1:{port}", "-D", dn, "-w", password],
        capture_output=True, env=env, timeout=30,
    ).returncode  # fmt: skip


def fill_claim(page: Any, serial: str, kind: str, codes: list[str]) -> None:
    page.fill("#claim-serial", serial)
    page.check(f"#claim-kind-{kind}")
    for number, value in enumerate(codes, start=1):
        page.fill(f"#claim-code{number}", value)
    page.click("#claim")


def claim_error(text: str) -> str | None:
    found = re.search(r'<p class="field-error" id="claim-serial-error">([^<]*)</p>', text)
    return found.group(1) if found else None


def inventory_section(backend: Any) -> dict[str, Any]:
    return {"inventory_dn": backend.inventory_dn()}


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_claim_an_hotp_fob_then_bind_resync_and_rename(backend: Any, tmp_path: Path) -> None:
    name, dn = backend.new_user("claim")
    phone = enroll_directly(backend, name)
    serial = unique("FOB")
    fob = os.urandom(20).hex()
    import_tokens(backend, tmp_path, f"{serial},{fob},hotp\n", "oath-csv")
    port = free_port()
    proxy = {"listen": [f"tcp:{port}:interface=127.0.0.1"], "require_tls_for_binds": False}
    with run_portal(backend, tmp_path, twistd=True, directory=inventory_section(backend),
                    ldap_proxy=proxy) as portal, browser(tmp_path) as page:  # fmt: skip
        sign_in(page, portal.url, name, PW, code(phone))
        assert page.url.endswith("/me"), page.content()
        # Codes that are not consecutive: the one answer, next to the serial field.
        a, _b, c, d = oathtool(fob, 0, 4)
        fill_claim(page, serial, "hotp", [a, c, d])
        assert page.inner_text("#claim-serial-error").strip() == UNAVAILABLE_TEXT
        described = page.get_attribute("#claim-serial", "aria-describedby") or ""
        assert "claim-serial-error" in described.split()
        assert page.input_value("#claim-serial") == serial  # kept; the codes are not
        assert page.input_value("#claim-code1") == ""
        shoot(page, backend, "claim-error")
        # Three consecutive codes, a few presses ahead: the token is hers.
        proving = oathtool(fob, 5, 3)
        fill_claim(page, serial, "hotp", proving)
        assert "Added" in page.inner_text("#notice"), page.content()
        row = page.locator("#devices tr[data-token]", has_text=serial)
        assert row.count() == 1 and "HOTP token" in row.inner_text()
        token_id = row.get_attribute("data-token")
        no_sideways = "document.documentElement.scrollWidth <= window.innerWidth + 1"
        assert page.evaluate(no_sideways)
        shoot(page, backend, "claim-done")
        # The proving codes never log in; the next code binds through the LDAP proxy.
        assert not ldap_bind(port, dn, PW + proving[2])
        next_code = oathtool(fob, 8)[0]
        if backend.is_ad:
            assert ldap_bind(port, dn, PW + next_code)
        else:
            assert whoami(port, dn, PW + next_code) == 0
        # Resynchronise after 300 presses away from the computer.
        assert not ldap_bind(port, dn, PW + oathtool(fob, 309)[0])  # beyond the look-ahead
        page.goto(portal.url + "/me")
        page.click(f"tr[data-token='{token_id}'] summary:text('Resynchronise')")
        for number, value in enumerate(oathtool(fob, 300, 3), start=1):
            page.fill(f"#resync-{token_id}-{number}", value)
        page.click(f"#resync-{token_id}")
        assert "in step again" in page.inner_text("#notice"), page.content()
        assert ldap_bind(port, dn, PW + oathtool(fob, 303)[0])
        assert not ldap_bind(port, dn, PW + oathtool(fob, 150)[0])  # never backwards
        # A resync with codes that are not in a row: refused next to its field.
        page.click(f"tr[data-token='{token_id}'] summary:text('Resynchronise')")
        for number, value in enumerate(oathtool(fob, 400, 3)[::-1], start=1):
            page.fill(f"#resync-{token_id}-{number}", value)
        page.click(f"#resync-{token_id}")
        assert "not three codes in a row" in page.inner_text(f"#resync-{token_id}-1-error")
        # Rename: a control character is refused next to the field, a plain name is kept.
        page.goto(portal.url + "/me")
        page.click(f"tr[data-token='{token_id}'] summary:text('Rename')")
        page.fill(f"#label-{token_id}", "desk\u202egnp.exe")
        page.click(f"#rename-{token_id}")
        assert "not allowed" in page.inner_text(f"#label-{token_id}-error")
        page.fill(f"#label-{token_id}", "Desk fob")
        page.click(f"#rename-{token_id}")
        assert "Renamed" in page.inner_text("#notice")
        assert "Desk fob" in page.locator(f"tr[data-token='{token_id}']").inner_text()
        # A phone-width layout: no sideways scrolling, the devices as cards.
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(portal.url + "/me")
        assert page.evaluate(no_sideways)
        assert page.evaluate(
            "getComputedStyle(document.querySelector('#devices tr[data-token]')).display"
        ) == "block"
        shoot(page, backend, "devices-phone")
        # The form without the session's CSRF token is refused.
        forged = page.request.post(portal.url + "/rename",
                                   form={"csrf": "forged", "token": token_id, "label": "x"})
        assert forged.status == 403
    audit = portal.audit.read_text()
    for event in ("'claim-reject'", "'claim'", "'resync'", "'resync-reject'", "'rename'"):
        assert event in audit, event
    for secret in (*proving, next_code, fob):
        assert f"'{secret}'" not in audit and secret not in portal.log.read_text()


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_claim_a_yubikey_from_a_yubico_csv(backend: Any, tmp_path: Path) -> None:
    name, _dn = backend.new_user("yk")
    phone = enroll_directly(backend, name)
    number = str(int.from_bytes(os.urandom(3), "big") + 1_000_000)
    key, uid = os.urandom(16), os.urandom(6)
    public = modhex_encode(os.urandom(6))
    import_tokens(backend, tmp_path, f"{number},{public},{uid.hex()},{key.hex()}\n",
                  "yubico-csv")  # fmt: skip
    serial = f"yk{number}"
    with run_portal(backend, tmp_path, directory=inventory_section(backend)) as portal, \
            browser(tmp_path) as page:  # fmt: skip
        sign_in(page, portal.url, name, PW, code(phone))
        # Another key's OTP (a different public id) does not claim it.
        fill_claim(page, serial, "yubico", [modhex_encode(os.urandom(6)) +
                                            ykgenerate(key, uid, 3, 0)])  # fmt: skip
        assert page.inner_text("#claim-serial-error").strip() == UNAVAILABLE_TEXT
        touch = public + ykgenerate(key, uid, 3, 1)
        fill_claim(page, serial, "yubico", [touch])
        assert "Added" in page.inner_text("#notice"), page.content()
        assert "YubiKey" in page.locator("#devices tr[data-token]", has_text=serial).inner_text()
        page.click("#signout")
        sign_in(page, portal.url, name, PW, touch)  # the claiming touch is spent
        assert page.url.endswith("/signin")
        sign_in(page, portal.url, name, PW, public + ykgenerate(key, uid, 3, 2))
        assert page.url.endswith("/me"), page.content()
        last_used = page.locator("#devices tr[data-token]", has_text=serial).locator(
            "td[data-label='last used']").inner_text()  # fmt: skip
        assert last_used != "never"


def signed_in(portal: Any, backend: Any, prefix: str) -> tuple[WebClient, str, bytes]:
    name, _dn = backend.new_user(prefix)
    key = enroll_directly(backend, name)
    client = WebClient(portal)
    assert client.sign_in(name, PW, code(key)) == 303
    return client, name, key


@pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)
def test_two_claims_at_once_and_serial_probing(backend: Any, tmp_path: Path) -> None:
    """Two browsers (two HTTP clients, two users) claim one serial at the same moment with
    its right codes: exactly one owns it; the other gets the answer an unknown serial gets,
    after as long.  Wrong codes, an unknown serial and a taken one each count towards the
    user's lockout, shared with sign-in."""
    serial = unique("RACE")
    fob = os.urandom(20).hex()
    import_tokens(backend, tmp_path, f"{serial},{fob}\n", "oath-csv")
    with run_portal(backend, tmp_path, directory=inventory_section(backend),
                    lockout={"max_failures": 3}) as portal:  # fmt: skip
        clients = [signed_in(portal, backend, "race") for _ in range(2)]
        csrfs = [c.csrf() for c, _n, _k in clients]
        codes = oathtool(fob, 0, 3)
        fields = {"serial": serial, "kind": "hotp", "code1": codes[0], "code2": codes[1],
                  "code3": codes[2]}  # fmt: skip
        barrier = threading.Barrier(2)
        results: list[Any] = [None, None]

        def claim(i: int) -> None:
            client = clients[i][0]
            barrier.wait()
            started = time.monotonic()
            status, text = client.post("/claim", fields, csrfs[i])
            results[i] = (status, text, time.monotonic() - started)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = sorted(r[0] for r in results)
        assert statuses == [200, 400], [r[:1] for r in results]
        winner = next(i for i in range(2) if results[i][0] == 200)
        loser = 1 - winner
        assert "Added" in results[winner][1]
        lost_status, lost_text, lost_seconds = results[loser]
        assert claim_error(lost_text) == UNAVAILABLE_TEXT
        # An unknown serial: the same answer, after as long.
        probe = clients[loser][0]
        started = time.monotonic()
        status, text = probe.post("/claim", {**fields, "serial": unique("NOPE")})
        unknown_seconds = time.monotonic() - started
        assert (status, claim_error(text)) == (lost_status, claim_error(lost_text))
        assert lost_seconds >= ANSWER_SECONDS and unknown_seconds >= ANSWER_SECONDS
        # Exactly one owner: the winner's devices list the serial, the loser's do not.
        assert serial in clients[winner][0].request("GET", "/me")[1]
        assert serial not in clients[loser][0].request("GET", "/me")[1]
        # The loser has 2 failures (taken, unknown); a taken serial now: the third locks.
        status, text = probe.post("/claim", fields)
        assert (status, claim_error(text)) == (lost_status, claim_error(lost_text))
        status, text = probe.post("/claim", fields)
        assert status == 403 and "locked until" in text
        # The lockout is the sign-in's too: the loser's next right code does not sign in.
        again = WebClient(portal)
        assert again.sign_in(clients[loser][1], PW, code(clients[loser][2], 1)) == 401
        # Wrong codes for a serial that is in the inventory: the same answer.
        other = unique("WRONG")
        import_tokens(backend, tmp_path, f"{other},{os.urandom(20).hex()}\n", "oath-csv")
        winner_client = clients[winner][0]
        status, text = winner_client.post("/claim", {**fields, "serial": other})
        assert (status, claim_error(text)) == (lost_status, claim_error(lost_text))
    audit = portal.audit.read_text()
    assert "taken meanwhile" in audit and "not in the inventory" in audit
    assert "codes do not prove it" in audit and "(now locked out)" in audit
    for secret in (*codes, fob):
        assert secret not in audit


def test_a_password_only_session_cannot_claim(slapd: Any, tmp_path: Path, request: Any) -> None:
    """A phished password (and a fob taken from the shelf) is not enough: the enroll-only
    session of a password-only first enrollment cannot claim; the token stays in stock."""
    from otpgate.directory.sync import SyncInventory, open_store
    from otpgate.vault import Keyring
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path)
    name, _dn = backend.new_user("newbie")
    serial = unique("SHELF")
    fob = os.urandom(20).hex()
    import_tokens(backend, tmp_path, f"{serial},{fob}\n", "oath-csv")
    web = {"password_only_enrollment_networks": ["127.0.0.1/32"]}
    with run_portal(backend, tmp_path, web, directory=inventory_section(backend)) as portal:
        client = WebClient(portal)
        assert client.sign_in(name, PW) == 303  # the enroll-only session
        status, text = client.request("GET", "/me")
        assert status == 200 and 'id="claim-form"' not in text
        codes = oathtool(fob, 0, 3)
        status, _text = client.post("/claim", {"serial": serial, "kind": "hotp", "code1": codes[0],
                                               "code2": codes[1], "code3": codes[2]})  # fmt: skip
        assert status == 403
        status, _text = client.post("/rename", {"token": "x", "label": "y"})
        assert status == 403
    assert "in a password-only (enroll-only) session" in portal.audit.read_text()
    config = backend.config({"inventory_dn": backend.inventory_dn()})
    store = open_store(config.directory, Keyring.load(backend.keyring))
    try:
        item = SyncInventory.open(store).get(serial)
        assert item.secret is not None and item.secret.key.hex() == fob
    finally:
        store.directory.close()
