"""``otpgate doctor``: may users write their own OTP state?  (OpenLDAP, the user-entry layout)

The gateway's own check (``directory/state_acl.py``: the subschema and the access rules in
cn=config, read as the service account), run with ldap3 against every configured server.
Users who may write their own state attributes could roll the use state back and replay
a spent code: a FAIL, as is a server whose rules cannot be evaluated with certainty (the
gateway refuses OTP logins on either), unless ``allow_self_writable_state = true`` accepts
the risk: then a finding is still a FAIL, a server that cannot be judged a warning.
"""

from __future__ import annotations

from otpgate.admin.doctor import Check, Status
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.drive import run_steps
from otpgate.directory.ldap3conn import SyncConnection, connect
from otpgate.directory.ldapdata import LdapUrl
from otpgate.directory.state_acl import ACL_FIX, AclVerdict, judge, probe
from otpgate.directory.state_acl_guard import configured_urls
from otpgate.errors import DirectoryError

AREA = "state ACL"


def server_verdict(conn: SyncConnection, url: str, config: DirectoryConfig) -> AclVerdict:
    """Run ``state_acl.probe`` over an ldap3 connection and judge it."""
    facts = run_steps(
        probe(url), lambda q: conn.search(q.base, q.filter_text, q.attributes, scope=q.scope)
    )
    return judge(facts, config)


def collect(config: DirectoryConfig) -> tuple[list[AclVerdict], list[str]]:
    """The verdict of every configured server; errors by URL."""
    verdicts, errors = [], []
    for text in configured_urls(config):
        try:
            conn = connect(LdapUrl.parse(text), config, None, None)
        except DirectoryError as exc:
            errors.append(f"{text}: {exc}")
            continue
        try:
            verdicts.append(server_verdict(conn, text, config))
        except DirectoryError as exc:
            errors.append(f"{text}: {exc}")
        finally:
            conn.close()
    return verdicts, errors


def state_acl_checks(
    config: DirectoryConfig, verdicts: list[AclVerdict], errors: list[str]
) -> list[Check]:
    override = config.allow_self_writable_state
    consequence = (
        "allow_self_writable_state = true lets the gateway accept OTP logins anyway"
        if override
        else "the gateway refuses every OTP login until this is fixed"
    )
    checks = [Check(AREA, Status.WARN, f"could not read {e}") for e in errors]
    for v in verdicts:
        area = f"{AREA} {v.url}"
        if v.safe:
            checks.append(
                Check(area, Status.OK, "users cannot write their own OTP state (olcAccess)")
            )
        elif v.findings:
            detail = "; ".join(v.findings)
            checks.append(
                Check(
                    area,
                    Status.FAIL,
                    f"users may write their own OTP state, roll it back and replay spent "
                    f"codes: {detail}; {consequence}",
                    ACL_FIX,
                )
            )
        else:
            checks.append(
                Check(
                    area,
                    Status.WARN if override else Status.FAIL,
                    f"cannot prove that users cannot write their own OTP state: {v.unproven}; "
                    f"{consequence}",
                    ACL_FIX,
                )
            )
    return checks
