"""The ``otpgate.cli`` package keeps its promises: ``otpgate code`` loads neither Twisted
nor ldap3, ``python -m otpgate.cli`` works, and a test can replace the password prompt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import otpgate.cli
from otpgate.cli import main

REPO = Path(__file__).resolve().parents[2]
PSKC = REPO / "tests" / "data" / "pskc"


def _python(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )


def test_code_imports_no_twisted_and_no_ldap3():
    probe = (
        "import sys\n"
        "from otpgate.cli import main\n"
        "main(['code', '--secret', 'JBSWY3DPEHPK3PXP', '--time', '59'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'ldap3', 'ldaptor'}))"
    )
    done = _python("-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["996554", "[]"]


def test_python_dash_m_runs_the_cli():
    done = _python("-m", "otpgate.cli", "code", "--secret", "JBSWY3DPEHPK3PXP", "--time", "59")
    assert (done.returncode, done.stdout, done.stderr) == (0, "996554\n", "")


def test_the_prompt_is_replaceable_on_the_package(monkeypatch, tmp_path, capsys):
    asked: list[str] = []

    def fake(prompt: str) -> str:
        asked.append(prompt)
        return "wrong"

    monkeypatch.setattr(otpgate.cli, "prompt_secret", fake)
    pskc = PSKC / "rfc6030-figure7-pbkdf2.pskc"
    config = str(tmp_path / "none.toml")
    code = main(["import", str(pskc), "--format", "pskc", "--password", "--config", config])
    assert asked == ["PSKC password: "]
    assert code in (1, 2) and capsys.readouterr().err.startswith("otpgate import: ")


def test_output_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """``otpgate census ... | head -1``: the closed pipe ends the command with SIGPIPE's
    status and nothing on standard error (no traceback, no error line)."""
    log = tmp_path / "audit.log"
    line = '{"time": %d, "event": "auth", "outcome": "accept", "front_end": "ldap", ' \
           '"user": "u%d", "dn": "uid=u%d,dc=x", "client": "127.0.0.1", "reason": "ok"}\n'
    log.write_text("".join(line % (1796637600 + i, i, i) for i in range(5000)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "otpgate.cli", "census", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    assert child.stdout.readline().startswith(b"account")
    child.stdout.close()
    errors = child.stderr.read()
    assert child.wait(timeout=60) == 141
    assert errors == b""
