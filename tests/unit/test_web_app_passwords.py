"""App passwords in the portal and the CLI's parts, in memory: the real Portal over the
in-memory directory and a Clock.  The secret is shown once (the create answer) and never in
the list, the audit trail or a later page; names are escaped; CSRF is required; only a
session that verified a code has the page, and only while ``[app_passwords]`` is on; the help
desk revokes; /metrics counts app-password logins."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest_twisted

from otpgate.admin.apppasswords import listing
from otpgate.apppass import FORM
from otpgate.cli.apppasswords import listener_named, rows_text
from otpgate.otp.oath import hotp
from otpgate.stats import AuthCounts
from otpgate.web import render_apps
from otpgate.web.metrics import Metrics, count_event
from otpgate.web.portal import Portal
from otpgate.web.sessions import Session
from tests.unit.test_app_passwords import LISTEN, MAIL, VPN, ldap, login
from tests.unit.test_pipeline import PW, World, config
from tests.unit.test_session_after_helpdesk import portal_for

HERE = "198.51.100.4"


def make_world(apps: bool = True) -> World:
    sections: dict[str, Any] = {
        "ldap_proxy": {
            "listen": LISTEN,
            "listener_rules": {MAIL: {"name": "mail server", "enforce": True}},
        },
        "radius": {"clients": [{"name": "wifi", "address": "192.0.2.0/24", "secret": "s" * 16}]},
    }
    if apps:
        sections["app_passwords"] = {"listeners": [MAIL, VPN], "nas": ["wifi"]}
    w = World(config(**sections))
    w.events = []  # type: ignore[attr-defined]
    w.auth.audit.observers.append(w.events.append)  # type: ignore[attr-defined]
    w.directory.add_user("alice", PW)
    return w


async def signed_in(world: World, portal: Portal) -> Session:
    key = await world.oath("alice")
    session = await portal._sign_in("alice", PW, hotp(key, 0), HERE, None)
    assert session is not None and session.otp_verified
    return session


def secret_in(html: str) -> str:
    """The secret shown on the create answer (its groups joined as typed)."""
    found = re.search(r'id="app-secret">(.*?)</code>', html)
    assert found, html
    text = re.sub(r"<[^>]+>", "", found.group(1))
    assert FORM.fullmatch(text), text
    return text


CREATE = {"name": "mail <script>", "ldap-0": MAIL, "networks": "", "expires": ""}


class FakeRequest:
    """What ``Portal._handle`` reads of a request."""

    def __init__(self, method: bytes, path: bytes, cookie: str, body: bytes = b"") -> None:
        import io

        from twisted.web.http_headers import Headers

        self.method, self.path, self.args = method, path, {}
        self.content = io.BytesIO(body)
        self.requestHeaders = Headers({b"cookie": [cookie.encode()]})

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[0] if values else None

    def getClientAddress(self) -> Any:
        return SimpleNamespace(host=HERE)


async def handle(portal: Portal, session: Session, method: bytes, path: bytes,
                 fields: dict[str, str] | None = None) -> Any:
    from urllib.parse import urlencode

    body = urlencode(fields or {}).encode()
    request = FakeRequest(method, path, f"{portal.cookie_name}={session.id}", body)
    return await portal._handle(request)


# -- rendering -------------------------------------------------------------------------------


class Inputs(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.inputs: list[dict[str, str]] = []
        self.labels: set[str] = set()
        self.scripts = self.styles = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Any]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.scripts += tag == "script" or any(k.startswith("on") for k in a)
        self.styles += "style" in a
        if tag == "input":
            self.inputs.append(a)
        if tag == "label":
            self.labels.add(a.get("for", ""))


def test_the_page_escapes_names_labels_every_field_and_has_no_inline_script() -> None:
    places = render_apps.Places(((MAIL, "mail <b>"), (VPN, VPN)), ("wifi",))
    rows = [{"id": "a1", "name": "<script>x</script>", "ldap": [MAIL], "radius": ["wifi"],
             "nets": ["10.0.0.0/8"], "created": 0, "exp": 0, "expired": False,
             "last_used": 1_700_000_000, "last_from": "192.0.2.7", "last_where": MAIL}]  # fmt: skip
    html = render_apps.my_apps(rows, places, "csrf")
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "mail &lt;b&gt;" in html and "<b>" not in html
    assert "LDAP mail &lt;b&gt;; RADIUS wifi; from 10.0.0.0/8" in html
    assert "from 192.0.2.7" in html and 'id="app-revoke-a1"' in html
    page = Inputs(html)
    visible = [i for i in page.inputs if i.get("type") != "hidden"]
    assert len(visible) == 6 and all(i["id"] in page.labels for i in visible)
    assert page.scripts == 0 and page.styles == 0
    shown = render_apps.created("abcd-efgh-ijkl-mnop-qrst-uvwx-yz23", "<i>", "LDAP x")
    assert "&lt;i&gt;" in shown and "<i>" not in shown
    assert secret_in(shown) == "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23"
    assert 'data-copy="app-secret"' in shown and "not be shown again" in shown
    assert Inputs(shown).scripts == 0


@pytest_twisted.ensureDeferred
async def test_create_shows_the_secret_once_and_the_list_never() -> None:
    w = make_world()
    portal = portal_for(w)
    session = await signed_in(w, portal)
    page = await portal.get_app_passwords(None, session, HERE)
    assert page.status == 200 and b'id="nav-apps"' in page.body
    assert b"LDAP: mail server" in page.body and b"RADIUS (Wi-Fi, VPN): wifi" in page.body
    made = await portal.post_app_create(dict(CREATE), session, HERE)
    html = made.body.decode()
    assert made.status == 200 and "mail &lt;script&gt;" in html and "<script>" not in html
    secret = secret_in(html)
    assert "LDAP mail server" in html  # the scope by the listener's name
    # The list, later pages and the audit trail never hold it.
    listed = (await portal.get_app_passwords(None, session, HERE)).body.decode()
    me = (await portal.get_me(None, session, HERE)).body.decode()
    for text in (listed, me, repr(w.events)):  # type: ignore[attr-defined]
        assert secret not in text and secret.replace("-", "") not in text
    assert "never" in listed and "mail &lt;script&gt;" in listed
    event = next(e for e in w.events if e["outcome"] == "app-password-create")  # type: ignore[attr-defined]
    assert event["front_end"] == "web" and event["user"] == "alice" and event["token"]
    # The browser's resubmission of the form is refused (same name): no second secret.
    again = await portal.post_app_create(dict(CREATE), session, HERE)
    assert again.status == 400 and b"app-secret" not in again.body
    assert b"already has an app password named" in again.body
    # It works where it was scoped, and the page says when and where it was last used.
    assert (await login(w, secret, ldap(MAIL), client="192.0.2.7")).ok
    listed = (await portal.get_app_passwords(None, session, HERE)).body.decode()
    assert "LDAP mail server" in listed and "from 192.0.2.7" in listed
    # Revoked: refused at once.
    state = w.store.decode(await w.store.resolve("alice", fresh=True))
    ident = state.apps[0].id
    gone = await portal.post_app_revoke({"token": ident}, session, HERE)
    assert gone.status == 200 and b"Revoked mail &lt;script&gt;." in gone.body
    assert not (await login(w, secret, ldap(MAIL))).ok
    assert any(e["outcome"] == "app-password-revoke" for e in w.events)  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_form_errors_stand_by_their_fields_and_nothing_is_made() -> None:
    w = make_world()
    portal = portal_for(w)
    session = await signed_in(w, portal)
    cases = [
        ({"name": "x"}, "app-where-error", "at least one"),
        ({**CREATE, "networks": "10.0.0.300/8"}, "app-networks-error", "network"),
        ({**CREATE, "expires": "2001-01-01"}, "app-expires-error", "passed"),
        ({**CREATE, "expires": "tomorrow"}, "app-expires-error", "a date such as"),
        ({**CREATE, "name": ""}, "app-name-error", "name"),
        ({**CREATE, "ldap-0": "tcp:1:interface=127.0.0.1"}, "app-where-error", "does not take"),
    ]
    for fields, where, text in cases:
        reply = await portal.post_app_create(fields, session, HERE)
        body = reply.body.decode()
        assert reply.status == 400 and f'id="{where}"' in body and text in body, (fields, body)
        assert "app-secret" not in body
    assert not w.store.decode(await w.store.resolve("alice", fresh=True)).apps


@pytest_twisted.ensureDeferred
async def test_csrf_is_required_and_a_password_only_session_has_no_page() -> None:
    w = make_world()
    portal = portal_for(w)
    session = await signed_in(w, portal)
    refused = await handle(portal, session, b"POST", b"/app-passwords/create", dict(CREATE))
    assert refused.status == 403
    assert not w.store.decode(await w.store.resolve("alice", fresh=True)).apps
    made = await handle(portal, session, b"POST", b"/app-passwords/create",
                        {**CREATE, "csrf": session.csrf})  # fmt: skip
    assert made.status == 200 and b'id="app-secret"' in made.body
    assert (await handle(portal, session, b"GET", b"/app-passwords")).status == 200
    # A password-only (first enrollment) session: neither the page nor the form.
    w.directory.add_user("bob", PW)
    bob = (await w.store.resolve("bob")).dn
    fresh = portal.sessions.new("bob", bob, w.clock.seconds(), enroll_only=True)
    assert (await handle(portal, fresh, b"GET", b"/app-passwords")).status == 403
    posted = await handle(portal, fresh, b"POST", b"/app-passwords/create",
                          {**CREATE, "csrf": fresh.csrf})  # fmt: skip
    assert posted.status == 403
    me = await portal.get_me(None, fresh, HERE)
    assert b"nav-apps" not in me.body


@pytest_twisted.ensureDeferred
async def test_off_without_places_no_link_and_404() -> None:
    w = make_world(apps=False)
    portal = portal_for(w)
    session = await signed_in(w, portal)
    assert (await handle(portal, session, b"GET", b"/app-passwords")).status == 404
    posted = await handle(portal, session, b"POST", b"/app-passwords/create",
                          {**CREATE, "csrf": session.csrf})  # fmt: skip
    assert posted.status == 404
    assert b"nav-apps" not in (await portal.get_me(None, session, HERE)).body


@pytest_twisted.ensureDeferred
async def test_revoke_all_and_the_help_desk() -> None:
    w = make_world()
    portal = portal_for(w)
    session = await signed_in(w, portal)
    secrets = []
    for name in ("one", "two", "three"):
        made = await portal.post_app_create({**CREATE, "name": name}, session, HERE)
        secrets.append(secret_in(made.body.decode()))
    agent = portal.sessions.new("desk", "uid=desk", w.clock.seconds(), helpdesk=True,
                                otp_verified=True)  # fmt: skip
    state = w.store.decode(await w.store.resolve("alice", fresh=True))
    page = (await portal.get_helpdesk(None, agent, HERE, "alice")).body.decode()
    assert "<h3>App passwords</h3>" in page and 'id="hd-app-revoke-all"' in page
    assert all(s not in page for s in secrets)
    one = state.apps[0].id
    done = await portal.hd_app_revoke({"user": "alice", "token": one}, agent, HERE)
    assert done.status == 200 and f"revoke app password {one}".encode() in done.body
    assert not (await login(w, secrets[0], ldap(MAIL))).ok
    assert (await login(w, secrets[1], ldap(MAIL))).ok
    event = next(e for e in w.events if e["outcome"] == "helpdesk-app-password-revoke")  # type: ignore[attr-defined]
    assert event["token"] == one and event["user"] == "alice" and "by desk" in event["reason"]
    await portal.hd_app_revoke_all({"user": "alice"}, agent, HERE)
    assert not w.store.decode(await w.store.resolve("alice", fresh=True)).apps
    assert not (await login(w, secrets[2], ldap(MAIL))).ok
    # The user's own revoke all.
    made = await portal.post_app_create({**CREATE, "name": "four"}, session, HERE)
    gone = await portal.post_app_revoke_all({}, session, HERE)
    assert b"Revoked four." in gone.body and b'id="no-apps"' in gone.body
    assert not (await login(w, secret_in(made.body.decode()), ldap(MAIL))).ok


def test_metrics_count_app_password_logins_and_sum_over_processes() -> None:
    counts = AuthCounts()
    for outcome in ("accept", "accept", "reject"):
        count_event(counts, {"outcome": outcome, "front_end": "ldap", "policy": "app password"})
    count_event(counts, {"outcome": "accept", "front_end": "radius", "policy": "app password"})
    count_event(counts, {"outcome": "accept", "front_end": "ldap", "policy": "otp"})
    assert counts.apps == {("ldap", "accept"): 2, ("ldap", "reject"): 1, ("radius", "accept"): 1}
    assert counts.auth[("ldap", "accept")] == 3
    summed = AuthCounts()
    summed.add(counts.to_dict())
    summed.add(counts.to_dict())
    assert summed.apps[("ldap", "accept")] == 4
    metrics = Metrics()
    metrics.observe_audit({"outcome": "reject", "front_end": "radius", "policy": "app password"})
    text = metrics.text().decode()
    line = 'otpgate_app_password_logins_total{front_end="radius",outcome="reject"} 1.0'
    assert line in text


def test_cli_parts() -> None:
    names = {MAIL: "mail server"}
    assert listener_named("mail server", LISTEN, names) == MAIL
    assert listener_named(VPN, LISTEN, names) == VPN
    assert listener_named("nothing", LISTEN, names) == "nothing"
    row = {"id": "a1", "name": "mail", "scope": "ldap x", "created": 0, "exp": 0,
           "expired": False, "last_used": 1_700_000_000, "last_where": MAIL,
           "last_from": "192.0.2.7"}  # fmt: skip
    (line,) = rows_text([row])
    assert "a1 'mail': ldap x" in line and f"on {MAIL} from 192.0.2.7" in line
    assert listing.__name__ == "listing"


@pytest_twisted.ensureDeferred
async def test_the_help_desk_cannot_revoke_a_protected_users_app_passwords() -> None:
    w = make_world()
    portal = portal_for(w)
    session = await signed_in(w, portal)
    made = await portal.post_app_create(dict(CREATE), session, HERE)
    secret = secret_in(made.body.decode())

    async def protected(dn: str) -> str:
        return "an administrator"

    portal.rights.protected = protected  # type: ignore[method-assign]
    agent = portal.sessions.new("desk", "uid=desk", w.clock.seconds(), helpdesk=True,
                                otp_verified=True)  # fmt: skip
    page = (await portal.get_helpdesk(None, agent, HERE, "alice")).body.decode()
    assert "<h3>App passwords</h3>" in page and "hd-app-revoke" not in page  # read only
    for post in (portal.hd_app_revoke_all, portal.hd_app_revoke):
        refused = await post({"user": "alice", "token": "mail <script>"}, agent, HERE)
        assert refused.status == 403
    assert w.store.decode(await w.store.resolve("alice", fresh=True)).apps
    assert (await login(w, secret, ldap(MAIL))).ok
