"""`pip install .` makes the twistd plugin visible, and a bad config is one line, not a traceback."""

import subprocess
import sys
from pathlib import Path

TWISTD = Path(sys.executable).with_name("twistd")


def test_twistd_lists_otpgate():
    out = subprocess.run([str(TWISTD), "--help"], capture_output=True, text=True, check=True).stdout
    assert any(line.split()[:1] == ["otpgate"] for line in out.splitlines()), out


def test_twistd_bad_config_is_one_clear_line(tmp_path):
    cfg = tmp_path / "otpgate.toml"
    cfg.write_text('[directory]\nurls = ["ldap://127.0.0.1:1"]\nprofile = "novell"\n')
    run = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "otpgate", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert run.returncode != 0
    err = [line for line in (run.stderr + run.stdout).splitlines() if line.strip()]
    assert err == [f"otpgate: {cfg}: [directory].profile: 'novell' is not one of ad, openldap, openldap-schema"], err


def test_twistd_needs_config_or_demo(tmp_path):
    run = subprocess.run([str(TWISTD), "-n", "otpgate"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0 and "give --config PATH, or --demo" in run.stdout + run.stderr
