"""``otpgate enroll --type email|sms`` and ``otpgate show`` for e-mail/SMS tokens, in-process
on an in-memory directory: the command's own code (options, attribute choice, the gateway's
sender with only its SMTP/HTTP call replaced, the typed-back proof, the compare-and-swap
write) and what ``show`` prints.  tests/integration/test_cli_sent_codes.py runs the same
against slapd and Samba with a real SMTP server."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

import otpgate.cli.sentcodes as sentcodes
import otpgate.cli.users as users
import otpgate.outofband.codes as codes
from otpgate.admin.listing import show_text, summarise
from otpgate.admin.sentcodes import (
    PROOF_ATTEMPTS,
    EnrollmentProof,
    new_sent_token,
    sent_enroll_change,
    shown_destination,
)
from otpgate.auth.oob import code_digest
from otpgate.cli import main
from otpgate.cli.base import Admin, CommandFailed, UsageError
from otpgate.config import Config
from otpgate.directory.drive import run_steps
from otpgate.directory.engine import Step
from otpgate.directory.ldapdata import SearchEntry
from otpgate.directory.records import OtpState
from otpgate.directory.sync import SyncStore
from otpgate.outofband.result import Attempt, Delivery
from otpgate.tokens import Secret, Token, TokenType, TokenUse, UsedState
from tests.sentcodes import proven_token
from tests.unit.memdir import MemoryDirectory
from tests.unit.test_pipeline import KEYRING, PW, config

DOT3 = "\u2022" * 3
DOT5 = "\u2022" * 5
SMTP = [{"host": "127.0.0.1", "port": 2525, "security": "none", "from": "otp@x"}]
SMS_HTTP = [{"url": "http://127.0.0.1:8080/sms", "body": {"to": "{to}", "text": "{code}"}}]


# -- an in-memory directory behind the CLI's Admin ---------------------------------------


class _Connection:
    def __init__(self, memdir: MemoryDirectory) -> None:
        self.memdir = memdir

    def search(self, base: str, filter_text: str, attributes: Any, **_: Any) -> list[SearchEntry]:
        found = self.memdir.entries.get(base.lower())
        if found is None:
            return []
        wanted = {a.lower() for a in attributes}
        return [SearchEntry(found[0], {k: list(v) for k, v in found[1].items() if k in wanted})]


class _Directory:
    def __init__(self, memdir: MemoryDirectory) -> None:
        self.memdir = memdir
        self.closed = 0

    def write(self) -> _Connection:
        return _Connection(self.memdir)

    def close(self) -> None:
        self.closed += 1


class _Store(SyncStore):
    def run(self, step: Step[Any]) -> Any:
        return run_steps(step, self.directory.memdir.perform)


class Bench:
    """The CLI against a MemoryDirectory: what was sent, and the state written."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: Any, cfg: Config) -> None:
        self.capsys = capsys
        self.memdir = MemoryDirectory()
        self.directory = _Directory(self.memdir)
        self.store = _Store(cfg.directory, KEYRING, self.directory)  # type: ignore[arg-type]
        self.sent: list[tuple[str, str, str]] = []
        """(channel, destination, message text)"""
        self.fail = False
        ctx = Admin.__new__(Admin)
        ctx.config, ctx.keyring, ctx._store = cfg, KEYRING, self.store  # type: ignore[misc]

        @contextmanager
        def fake_admin(args: Any) -> Iterator[Admin]:
            yield ctx

        monkeypatch.setattr(sentcodes, "admin", fake_admin)
        monkeypatch.setattr(users, "admin", fake_admin)
        monkeypatch.setattr(sentcodes, "run_reactor", _without_reactor)
        monkeypatch.setattr(codes, "send_mail", self._send_mail)
        monkeypatch.setattr(codes, "send_sms", self._send_sms)
        self.monkeypatch = monkeypatch

    async def _send_mail(self, reactor: Any, servers: Any, to: str, content: Any) -> Delivery:
        self.sent.append(("email", to, content.text))
        reason = "connection refused" if self.fail else ""
        return Delivery("email", "masked", (Attempt("smtp://127.0.0.1:2525", reason),))

    async def _send_sms(self, reactor: Any, delivery: Any, message: Any) -> Delivery:
        self.sent.append(("sms", message.to, message.code))
        return Delivery("sms", "masked", (Attempt("http://127.0.0.1:8080/sms", ""),))

    def code(self) -> str:
        found = re.search(r"\b(\d{6,8})\b", self.sent[-1][2])
        assert found, self.sent
        return found.group(1)

    def user(self, name: str = "alice", **attributes: Any) -> str:
        attributes.setdefault("mail", [f"{name}@example.org"])
        return self.memdir.add_user(name, PW, **attributes)

    def state(self, name: str = "alice") -> OtpState:
        return self.store.decode(self.store.resolve(name))

    def run(self, *argv: str, typed: str = "") -> tuple[int, str, str]:
        self.monkeypatch.setattr("sys.stdin", io.StringIO(typed))
        self.capsys.readouterr()
        code = main([*argv, "--config", "unused.toml"])
        out = self.capsys.readouterr()
        return code, out.out, out.err


def _without_reactor(work: Any, failure: str) -> Any:
    """run_reactor for senders that never wait (the SMTP/HTTP call is replaced)."""
    results: list[Any] = []
    defer.ensureDeferred(work(None)).addBoth(results.append)
    (result,) = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


def delivery(**extra: Any) -> dict[str, Any]:
    return {"smtp": SMTP, "code_digits": 8, **extra}


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Bench:
    return Bench(monkeypatch, capsys, config(delivery=delivery()))


# -- enroll --type email|sms ----------------------------------------------------------------


def test_email_token_is_written_only_after_the_code_comes_back(bench: Bench) -> None:
    bench.user(mail=["alice.smith@example.org"])
    bench.monkeypatch.setattr("sys.stdin", io.StringIO(""))
    codes_typed: list[str] = []

    def typed_back(prompt: str) -> str | None:
        assert bench.state().tokens == ()  # nothing written while the code is out
        assert bench.directory.closed  # and no connection held open meanwhile
        codes_typed.append(bench.code())
        return bench.code() + "\n"

    bench.monkeypatch.setattr(sentcodes, "read_line", typed_back)
    code, out, err = bench.run("enroll", "alice", "--type", "email", "--label", "inbox")
    assert code == 0, err
    ((channel, to, _text),) = bench.sent
    assert (channel, to) == ("email", "alice.smith@example.org")
    assert len(codes_typed[0]) == 8  # [delivery] code_digits
    assert out.splitlines()[0] == f"code sent to a{DOT3}@example.org by smtp://127.0.0.1:2525"
    assert "enrolled e-mail token" in out and f"its codes go to mail (a{DOT3}@example.org)" in out
    assert "alice.smith" not in out + err and codes_typed[0] not in out + err
    (token,) = bench.state().tokens
    assert (token.type, token.attribute, token.digits, token.label) == (
        TokenType.EMAIL, "mail", 8, "inbox"
    )


def test_a_new_email_token_replaces_the_old_one_and_json(bench: Bench) -> None:
    bench.user()
    old, secret = proven_token(TokenType.EMAIL, "mail", "alice@example.org")
    user = bench.store.resolve("alice")
    bench.store.update(user, lambda s: sent_enroll_change(s, old, secret))
    bench.monkeypatch.setattr(sentcodes, "read_line", lambda prompt: bench.code())
    code, out, err = bench.run("enroll", "alice", "--type", "email", "--json")
    assert code == 0, err
    doc = json.loads(out)  # the progress line went to stderr: stdout is one JSON document
    assert doc["replaced"] == [old.id] and doc["token"]["type"] == "email"
    assert doc["sent_to"] == f"a{DOT3}@example.org" and doc["delivered_by"] == "smtp://127.0.0.1:2525"
    assert "code sent to" in err
    (token,) = bench.state().tokens
    assert token.id == doc["token"]["id"] != old.id


def test_wrong_code_three_times_writes_nothing(bench: Bench) -> None:
    bench.user()
    code, _out, err = bench.run("enroll", "alice", "--type", "email", typed="1\n2\n\n3\n4\n")
    assert code == 1
    lines = err.splitlines()
    assert lines[:2] == ["wrong code; 2 more tries", "wrong code; 1 more try"]
    assert lines[-1] == (
        f"otpgate enroll: wrong code {PROOF_ATTEMPTS} times: the token was not enrolled; "
        "nothing was changed"
    )
    assert len(bench.sent) == 1
    assert bench.state().tokens == ()
    assert bench.memdir.operations.count("Modify") == 0


def test_the_end_of_the_input_writes_nothing(bench: Bench) -> None:
    bench.user()
    code, _out, err = bench.run("enroll", "alice", "--type", "email", typed="")
    assert code == 1 and "no code was typed back" in err
    assert bench.state().tokens == ()


def test_without_a_gateway_of_the_channel_nothing_is_sent(monkeypatch, capsys) -> None:
    bench = Bench(monkeypatch, capsys, config())  # no [delivery]
    bench.user()
    code, _out, err = bench.run("enroll", "alice", "--type", "email")
    assert code == 2 and "--type email needs [[delivery.smtp]] in the config" in err
    code, _out, err = bench.run("enroll", "alice", "--type", "sms")
    assert code == 2 and "[[delivery.sms_http]] or [delivery.sms_email]" in err
    assert bench.sent == [] and bench.state().tokens == ()


def test_sms_destinations_are_checked_before_anything_is_sent(monkeypatch, capsys) -> None:
    cfg = config(delivery=delivery(sms_http=SMS_HTTP, sms_country_prefixes=["+49"]))
    bench = Bench(monkeypatch, capsys, cfg)
    bench.user("nonum")
    bench.user("abroad", mobile=["+1 555 0100 42"])
    bench.user("two", telephoneNumber=["+49 30 1234567", "+49 30 7654321"])
    bench.user("bob", telephoneNumber=["+49 (151) 1234-5689"])
    code, _out, err = bench.run("enroll", "nonum", "--type", "sms")
    assert code == 1
    assert "nonum: the entry has none of mobile, telephoneNumber" in err and "[delivery] sms_attributes" in err
    code, _out, err = bench.run("enroll", "abroad", "--type", "sms")
    assert code == 1 and f"+{DOT5}42 is outside sms_country_prefixes" in err
    assert "nothing was changed" in err and "555" not in err
    code, _out, err = bench.run("enroll", "two", "--type", "sms")
    assert code == 1 and "2 telephoneNumber values" in err
    assert bench.sent == []
    for name in ("nonum", "abroad", "two"):
        assert bench.state(name).tokens == ()
    # The first of sms_attributes the entry has; the number normalised to +E.164.
    monkeypatch.setattr(sentcodes, "read_line", lambda prompt: bench.code())
    code, out, err = bench.run("enroll", "bob", "--type", "sms")
    assert code == 0, err
    assert bench.sent[-1][:2] == ("sms", "+4915112345689")
    assert f"code sent to +{DOT5}89 by http://127.0.0.1:8080/sms" in out
    (token,) = bench.state("bob").tokens
    assert (token.type, token.attribute) == (TokenType.SMS, "telephoneNumber")


def test_email_needs_one_address_in_the_attribute(bench: Bench) -> None:
    bench.user("two", mail=["a@example.org", "b@example.org"])
    bench.user("carol", mail=["carol@example.org"])
    code, _out, err = bench.run("enroll", "two", "--type", "email")
    assert code == 1 and "has 2 mail values" in err and "nothing was changed" in err
    code, _out, err = bench.run("enroll", "carol", "--type", "email", "--attribute", "street")
    assert code == 1 and "has no street attribute" in err
    assert bench.sent == []
    assert bench.state("two").tokens == () and bench.state("carol").tokens == ()


def test_every_gateway_failing_writes_nothing(bench: Bench) -> None:
    bench.user()
    bench.fail = True
    code, _out, err = bench.run("enroll", "alice", "--type", "email")
    assert code == 1
    assert f"could not be sent to a{DOT3}@example.org (smtp://127.0.0.1:2525: connection refused)" in err
    assert bench.state().tokens == ()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--type", "email", "--secret", "JBSWY3DPEHPK3PXP"], "--secret is for totp/hotp"),
        (["--type", "sms", "--digits", "8"], "--digits is for totp/hotp tokens, not --type sms"),
        (["--type", "email", "--qr", "x.png"], "--qr is for totp/hotp"),
        (["--type", "email", "--keep-existing"], "--keep-existing is for totp/hotp"),
        (["--type", "email", "--attribute", "m@il"], "--attribute 'm@il' is not an attribute"),
        (["--type", "totp", "--attribute", "mail"], "--attribute is for email/sms tokens"),
    ],
)
def test_options_that_do_not_apply_are_usage_errors(bench: Bench, argv, message) -> None:
    bench.user()
    code, _out, err = bench.run("enroll", "alice", *argv)
    assert code == 2 and message in err, err
    assert bench.sent == [] and bench.state().tokens == ()


# -- the proof loop --------------------------------------------------------------------------


def _proof(lifetime: int = 300) -> tuple[EnrollmentProof, str]:
    token, secret = new_sent_token(TokenType.EMAIL, "mail", 6, now=1000)
    return EnrollmentProof.start(token, secret, 1000, lifetime)


def test_prove_accepts_the_code_after_a_wrong_one() -> None:
    proof, code = _proof()
    answers = iter(["000000" if code != "000000" else "111111", f"  {code}\n"])
    said: list[str] = []
    sentcodes.prove(proof, lambda p: next(answers), said.append, lambda: 1010, "code: ")
    assert said == ["wrong code; 2 more tries"]


def test_prove_refuses_an_expired_code() -> None:
    proof, code = _proof(lifetime=60)
    with pytest.raises(CommandFailed, match=r"expired \(\[delivery\] code_lifetime\)"):
        sentcodes.prove(proof, lambda p: code, print, lambda: 1060, "code: ")


def test_gateway_check_names_the_key() -> None:
    with pytest.raises(UsageError, match=r"\[\[delivery\.smtp\]\]"):
        sentcodes.delivery_for(None, TokenType.EMAIL)


# -- show ------------------------------------------------------------------------------------


def test_show_masks_the_destination_read_now_and_tells_the_outstanding_code(
    monkeypatch, capsys
) -> None:
    cfg = config(delivery=delivery(sms_http=SMS_HTTP, sms_country_prefixes=["+49"]))
    bench = Bench(monkeypatch, capsys, cfg)
    bench.user(mail=["alice.smith@example.org"], mobile=["+49 151 1234589"])
    mail, mail_secret = proven_token(TokenType.EMAIL, "mail", "alice.smith@example.org")
    mail = replace(mail, label="inbox")
    sms, sms_secret = proven_token(TokenType.SMS, "mobile", "+491511234589")
    user = bench.store.resolve("alice")
    user = bench.store.update(user, lambda s: sent_enroll_change(s, mail, mail_secret))[1]
    now = int(__import__("time").time())
    digest = code_digest(mail_secret.key, now - 10, "123456")

    def sent(state: OtpState) -> Any:
        from otpgate.directory.records import StateChange

        done = sent_enroll_change(state, sms, sms_secret)
        used = done.used.with_use(mail.id, TokenUse(code=digest, sent=now - 10))
        return StateChange(None, used=UsedState(used.tokens, sends=(now - 4000, now - 10)),
                           tokens=done.tokens, secrets=done.secrets)

    bench.store.update(user, sent)
    code, out, err = bench.run("show", "alice")
    assert code == 0, err
    assert re.search(rf"email {mail.id}: to mail a{DOT3}@example.org; code sent at .+, expires ", out)
    assert f"sms {sms.id}: to mobile +{DOT5}89; none outstanding" in out
    assert "codes sent in the last hour: 1" in out
    assert "alice.smith" not in out and "1234589" not in out
    code, out, err = bench.run("show", "alice", "--json")
    doc = json.loads(out)
    rows = {t["type"]: t for t in doc["tokens"]}
    assert rows["email"]["destination"] == f"a{DOT3}@example.org"
    assert rows["email"]["code"] == {"sent": now - 10, "expires": now - 10 + 300}
    assert rows["sms"]["attribute"] == "mobile" and rows["sms"]["code"] is None
    assert doc["sends_last_hour"] == 1
    assert "alice.smith" not in out and "1234589" not in out and digest.hex() not in out


@pytest.mark.parametrize(
    ("kind", "values", "shown"),
    [
        (TokenType.EMAIL, [], "no value"),
        (TokenType.EMAIL, [b"a@x.org", b"b@x.org"], "2 values"),
        (TokenType.EMAIL, [b"Alice <a@x.org>"], "not one plain e-mail address"),
        (TokenType.EMAIL, [b"alice@x.org"], f"a{DOT3}@x.org"),
        (TokenType.SMS, [], "no value"),
        (TokenType.SMS, [b"0151 1234589"], "not one +E.164 number"),
        (TokenType.SMS, [b"+1 555 010042"], f"+{DOT5}42 (outside sms_country_prefixes)"),
        (TokenType.SMS, [b"+49 151 1234589"], f"+{DOT5}89"),
    ],
)
def test_shown_destination(kind: TokenType, values: list[bytes], shown: str) -> None:
    token, _secret = new_sent_token(kind, "mail" if kind is TokenType.EMAIL else "mobile", 6)
    assert shown_destination(token, values, ["+49"]) == shown


def test_show_text_without_a_read_destination_and_an_expired_code() -> None:
    token, _secret = new_sent_token(TokenType.SMS, "mobile", 6, now=0)
    use = TokenUse(code=b"d" * 16, sent=1000)
    state = OtpState(tokens=(token,), secrets={token.id: Secret(b"k")},
                     used=UsedState({token.id: use}, sends=(1000,)))
    text = show_text(summarise("bob", "uid=bob", state, now=1400, lifetime=300), 1400)
    assert f"sms {token.id}: to mobile not read; none outstanding" in text
    assert "codes sent in the last hour: 1" in text
    live = summarise("bob", "uid=bob", state, now=1200, lifetime=300)
    assert live.tokens[0].code_expires == 1300
    row = live.tokens[0].to_dict()
    assert row["code"] == {"sent": 1000, "expires": 1300} and row["destination"] is None


def test_totp_rows_carry_no_sent_code_fields() -> None:
    token = Token(id="t1", type=TokenType.TOTP, created=0)
    state = OtpState(tokens=(token,), secrets={}, used=UsedState())
    (row,) = summarise("bob", "uid=bob", state, now=0).to_dict(0)["tokens"]
    assert "destination" not in row and "code" not in row


def test_on_a_terminal_the_code_is_asked_for_without_echo(bench: Bench) -> None:
    import otpgate.cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bench.user()
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return bench.code()

    bench.monkeypatch.setattr(otpgate.cli, "prompt_secret", prompt)
    bench.monkeypatch.setattr("sys.stdin", Terminal(""))
    bench.capsys.readouterr()
    assert main(["enroll", "alice", "--type", "email", "--config", "unused.toml"]) == 0
    assert asked == [f"code from the e-mail to a{DOT3}@example.org: "]
    assert len(bench.state().tokens) == 1


def test_re_enrolling_after_the_destination_changed_needs_the_flag(bench: Bench) -> None:
    """The insider with a phished password put her own address in ``mail``: the admin's
    re-enrollment stops and says so; with --destination-changed (after verifying the user
    by other means) it goes on."""
    bench.user(mail=["mallory@example.org"])
    old, secret = proven_token(TokenType.EMAIL, "mail", "alice@example.org")
    user = bench.store.resolve("alice")
    bench.store.update(user, lambda s: sent_enroll_change(s, old, secret))
    bench.monkeypatch.setattr(sentcodes, "read_line", lambda prompt: bench.code())
    code, _out, err = bench.run("enroll", "alice", "--type", "email")
    assert code == 1 and "--destination-changed" in err and "not the destination" in err
    assert [t.id for t in bench.state().tokens] == [old.id]  # nothing written, nothing sent
    code, _out, err = bench.run("enroll", "alice", "--type", "email", "--destination-changed")
    assert code == 0, err
