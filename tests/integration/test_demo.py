"""The README's first command: `./scripts/demo` (that is `twistd otpgate --demo`) and everything
its banner says to try, with real clients: ldapwhoami, radtest, Chromium (Playwright) on the
portal and the help desk, curl on /metrics, the printed `otpgate` CLI line, and carol's code
sent by e-mail to the demo's mail sink, read off the demo's console."""

from __future__ import annotations

import base64
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otpgate.otp.oath import totp
from tests.browser.portal import browser
from tests.netutil import free_port

TWISTD = Path(sys.executable).with_name("twistd")
ALICE = "uid=alice,ou=people,dc=demo,dc=otpgate"
CAROL = "uid=carol,ou=people,dc=demo,dc=otpgate"
MAILED = re.compile(
    r"otpgate demo: mail for carol@demo\.otpgate, received by the demo's mail sink:\n"
    r"  \| Subject: Your one-time code for otpgate demo\n"
    r"  \| Your one-time code for otpgate demo: (\d{6})\n"
)
PERIOD = 30


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def b32(text: str) -> bytes:
    text = "".join(text.split()).upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def step_now() -> int:
    return int(time.time()) // PERIOD


@dataclass
class Demo:
    process: subprocess.Popen[str]
    banner: str
    ports: tuple[int, int, int]
    cwd: Path
    log: list[str]
    """twistd's log after the banner (read all along, so the pipe never fills)."""

    def line(self, label: str) -> str:
        """The command the banner prints for one front end (``LDAP``, ``RADIUS``, ...)."""
        found = re.search(rf"^  {label} +(.+)$", self.banner, re.M)
        assert found, f"no {label} line in the banner:\n{self.banner}"
        return found.group(1)

    def secret(self, name: str) -> str:
        found = re.search(rf"otpauth://totp/otpgate%20demo:{name}\?secret=([A-Z2-7]+)", self.banner)
        assert found, self.banner
        return found.group(1)

    def at_step(self, command: str, step: int) -> str:
        """The printed command with its `otpgate code` computing the code of ``step``: each code
        works once on every front end, so the next front end needs the next code (the banner
        says so); this is the next one, without waiting for it."""
        shell = f"--secret {self.secret('alice')})"
        assert shell in command, command
        return command.replace(shell, f"--secret {self.secret('alice')} --time {step * PERIOD})")

    def mailed(self, count: int, timeout: float = 20) -> str:
        """The code in the ``count``-th message the demo's console shows for carol."""
        deadline = time.monotonic() + timeout
        while True:
            codes = MAILED.findall("".join(self.log))
            if len(codes) >= count:
                return str(codes[count - 1])
            assert time.monotonic() < deadline, "".join(self.log)[-3000:]
            time.sleep(0.1)

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """A printed line, run as the reader would: by a shell, from the demo's directory."""
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              timeout=60, cwd=self.cwd)


@contextmanager
def run_demo(cwd: Path, *options: str) -> Iterator[Demo]:
    ports = (free_port(), free_udp_port(), free_port())
    args = ["--port", str(ports[0]), "--radius-port", str(ports[1]), "--web-port", str(ports[2])]
    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "otpgate", "--demo", *args, *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stdout or ()), daemon=True)
    try:
        output = ""
        deadline = time.monotonic() + 60
        while "Stop with Ctrl-C" not in output:
            line = process.stdout.readline() if process.stdout else ""
            assert line, f"demo exited early:\n{output}"
            output += line
            assert time.monotonic() < deadline, output
        reader.start()
        yield Demo(process, output[output.index("otpgate demo:"):], ports, cwd, log)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        if reader.is_alive():
            reader.join(timeout=10)


def wait_clear_of_step_end() -> None:
    """Run a line with the real clock well inside a TOTP step, so its step is known."""
    into = time.time() % PERIOD
    if into > PERIOD - 3:
        time.sleep(PERIOD - into + 0.5)


def wrong_code(key: bytes, step: int) -> str:
    near = {totp(key, (step + d) * PERIOD) for d in range(-3, 6)}
    return next(c for c in (f"{n:06d}" for n in range(1, 100)) if c not in near)


def test_everything_the_banner_says(tmp_path: Path) -> None:
    with run_demo(tmp_path) as demo:
        banner = demo.banner
        config = Path(re.search(r"--config (\S+)", demo.line("CLI")).group(1))
        folder = config.parent
        assert (folder / "keyring.json").stat().st_mode & 0o077 == 0
        assert config.stat().st_mode & 0o077 == 0
        alice_key = b32(demo.secret("alice"))
        dana_key = b32(demo.secret("dana"))

        # LDAP: the printed ldapwhoami as it is; run twice, the second bind is refused.
        ldap = demo.line("LDAP")
        wait_clear_of_step_end()
        step = step_now()
        good = demo.run(ldap)
        assert good.returncode == 0, good.stderr
        assert good.stdout.strip() == f"dn:{ALICE}"
        replay = demo.run(ldap)
        assert replay.returncode == 49, replay

        # RADIUS: the printed radtest (it sends Message-Authenticator), with the next code:
        # Access-Accept, then the same line again: Access-Reject.
        radius = demo.at_step(demo.line("RADIUS"), step + 1)
        first = demo.run(radius)
        assert "Received Access-Accept" in first.stdout, first.stdout + first.stderr
        assert "Message-Authenticator" in first.stdout  # what radtest -x shows it sent
        again = demo.run(radius)
        assert "Received Access-Reject" in again.stdout, again.stdout + again.stderr

        # The portal: alice signs in with password + code, enrolls a second device and prints
        # a scratch list.
        portal = re.match(r"(http://127\.0\.0\.1:\d+)\s", demo.line("portal")).group(1)
        assert portal == f"http://127.0.0.1:{demo.ports[2]}"
        with browser(tmp_path) as page:
            sign_in(page, portal, "alice", "alice-password", totp(alice_key, (step + 2) * PERIOD))
            assert page.url.endswith("/me"), page.content()
            page.fill("#label", "laptop")
            page.click("#enroll")
            laptop_key = b32(page.inner_text("#secret"))
            page.fill("#code", totp(laptop_key, time.time()))
            page.click("#confirm")
            assert "is active" in page.inner_text("#notice")
            rows = page.locator("#devices tr[data-token]")
            assert rows.count() == 2, page.content()
            page.click("#scratch")
            assert page.locator("#codes li").count() == 10
            page.goto(portal + "/me")
            page.click("#signout")

        # Wrong codes over LDAP lock alice out (5 failures by default).
        for _ in range(5):
            bad = f"alice-password,{wrong_code(alice_key, step)}"
            refused = demo.run(f"ldapwhoami -x -H ldap://127.0.0.1:{demo.ports[0]} -D {ALICE} "
                               f"-w {bad}")
            assert refused.returncode == 49
        locked = demo.run(demo.at_step(ldap, step + 3))
        assert locked.returncode == 49  # the right code, but locked out

        # The help desk: dana (printed with her password and her own token) finds alice by
        # the start of her name, unlocks her and revokes the laptop.
        with browser(tmp_path) as page:
            sign_in(page, portal, "dana", "dana-password", totp(dana_key, time.time()))
            assert page.url.endswith("/me"), page.content()
            page.click("a[href='/helpdesk']")
            page.fill("#q", "ali")
            page.click("#search")
            page.click("#matches a:text-is('alice')")
            assert page.inner_text("#user-dn") == ALICE
            assert "locked until" in page.inner_text("#lock")
            page.click("#hd-unlock")
            assert "Done: unlock" in page.inner_text("#notice")
            assert "not locked" in page.inner_text("#lock")
            laptop = page.locator("#devices tr[data-token]", has_text="laptop")
            page.click(f"#revoke-{laptop.get_attribute('data-token')}")
            assert "Done" in page.inner_text("#notice")
            assert "laptop" not in page.inner_text("#devices")
            # Help-desk members are not the help desk's to change, dana included.
            page.goto(portal + "/helpdesk?q=dana")
            assert page.locator("#protected").count() == 1

        # Unlocked: alice's next code binds again.
        unlocked = demo.run(demo.at_step(ldap, step + 3))
        assert unlocked.returncode == 0, unlocked.stderr
        # The exempt service account (README) binds with its password alone.
        exempt = demo.run(f"ldapwhoami -x -H ldap://127.0.0.1:{demo.ports[0]} "
                          "-D uid=app,ou=services,dc=demo,dc=otpgate -w app-password")
        assert exempt.returncode == 0, exempt.stderr

        # /metrics with the printed curl line: every front end's logins are counted.
        metrics = demo.run(demo.line("metrics"))
        assert metrics.returncode == 0, metrics.stderr
        for front_end, outcome in (("ldap", "accept"), ("ldap", "reject"), ("radius", "accept"),
                                   ("radius", "reject"), ("web", "accept")):
            sample = f'otpgate_authentications_total{{front_end="{front_end}",outcome="{outcome}"}}'
            assert sample in metrics.stdout, metrics.stdout
        assert "otpgate_lockouts_total 1.0" in metrics.stdout

        # The printed CLI line, against the demo directory with the demo's config and keyring.
        show = demo.run(demo.line("CLI"))
        assert show.returncode == 0, show.stdout + show.stderr
        assert ALICE in show.stdout and "not locked" in show.stdout
        assert "demo phone" in show.stdout and "laptop" not in show.stdout
        assert re.search(r"scratch\s.*\s10\b", show.stdout), show.stdout

        # The banner stays short: one line per front end (and carol's e-mail) before the QR
        # codes.
        head = banner[: banner.index("otpauth://")]
        assert len(head.splitlines()) <= 15, head
    assert demo.process.returncode == -signal.SIGTERM  # twistd ends by the signal it got
    assert not folder.exists()  # the config and keyring went with the demo
    log = "".join(demo.log)
    assert "auth accept radius user='alice'" in log  # the audit trail, in twistd's log
    for secret in ("alice-password", "dana-password", demo.secret("alice"), demo.secret("dana")):
        assert secret not in log


def test_carol_gets_her_code_by_email(tmp_path: Path) -> None:
    """The banner's e-mail line: `-w carol-password,email` makes the gateway send carol a
    code; the demo's mail sink prints it on the console; the next bind with
    `-w carol-password,CODE` works, once.  The same over RADIUS (append mode), then the
    CLI's own e-mail enrollment against the demo, with the code from the console."""
    with run_demo(tmp_path) as demo:
        ask = demo.line("e-mail")
        assert ask.endswith(f"-D {CAROL} -w carol-password,email"), ask
        asked = demo.run(ask)
        assert asked.returncode != 0, asked  # no bind: a code was sent instead
        code = demo.mailed(1)
        with_code = ask.replace("carol-password,email", f"carol-password,{code}")
        bound = demo.run(with_code)
        assert bound.returncode == 0, bound.stderr
        assert bound.stdout.strip() == f"dn:{CAROL}"
        assert demo.run(with_code).returncode == 49  # spent

        # RADIUS, append mode: the same trigger word, once the cooldown (10 s) is over.
        time.sleep(10.5)
        radius = (f"radtest -x carol carol-password,{{}} 127.0.0.1:{demo.ports[1]} 0 "
                  "otpgate-demo-nas-secret")
        sent = demo.run(radius.format("email"))
        assert "Received Access-Accept" not in sent.stdout, sent.stdout
        code = demo.mailed(2)
        accepted = demo.run(radius.format(code))
        assert "Received Access-Accept" in accepted.stdout, accepted.stdout + accepted.stderr

        # The CLI enrolls carol's e-mail token again, the code typed back from the console.
        show = demo.line("CLI")
        otpgate, config = show.split(" show alice --config ")
        enroll = subprocess.Popen(
            ["bash", "-c", f"{otpgate} enroll carol --type email --config {config}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=demo.cwd,
        )
        code = demo.mailed(3)
        out, err = enroll.communicate(f"{code}\n", timeout=60)
        assert enroll.returncode == 0, err
        assert out.startswith("code sent to c\u2022\u2022\u2022@demo.otpgate by smtp://127.0.0.1:")
        assert "replaced:" in out
        shown = demo.run(f"{otpgate} show carol --config {config}")
        assert re.search(r"email \w+: to mail c\u2022+@demo\.otpgate; none outstanding",
                         shown.stdout), shown.stdout
        assert "codes sent in the last hour: 2" in shown.stdout
        assert "carol@demo" not in shown.stdout
    log = "".join(demo.log)
    assert "auth accept ldap user='uid=carol" in log and "auth accept radius user='carol'" in log
    assert "carol-password" not in log


def sign_in(page: Any, url: str, name: str, password: str, otp: str) -> None:
    page.goto(url + "/signin")
    page.fill("#username", name)
    page.fill("#password", password)
    page.fill("#otp", otp)
    page.click("#signin")


@pytest.mark.parametrize("option", ["--port", "--radius-port", "--web-port"])
def test_busy_port_is_one_line_and_exit_2(tmp_path: Path, option: str) -> None:
    kind = socket.SOCK_DGRAM if option == "--radius-port" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            busy.listen(1)
        port = busy.getsockname()[1]
        ports = {"--port": free_port(), "--radius-port": free_udp_port(), "--web-port": free_port()}
        ports[option] = port
        args = [a for o, p in ports.items() for a in (o, str(p))]
        run = subprocess.run(
            [str(TWISTD), "-n", "--pidfile=", "otpgate", "--demo", *args],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    assert run.returncode == 2, run
    assert run.stderr.splitlines() == [
        f"otpgate demo: {option} {port}: cannot listen on 127.0.0.1:{port} "
        f"({'UDP' if option == '--radius-port' else 'TCP'}): Address already in use; "
        f"choose another port with {option} N"
    ], run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_port_option_is_a_usage_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "otpgate", "--demo", "--web-port", "70000"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert run.returncode != 0
    assert "70000 is not a port number" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
