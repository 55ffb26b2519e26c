"""The portal's inventory index (pure parts and its refresher over a fake directory), the
multipart reader of the upload form, paged searches in the gateway's BER client, and the
body cap that lets only a help-desk session upload."""

from __future__ import annotations

import os
import random

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from otpgate import ber
from otpgate.admin.imports import clash_problems
from otpgate.admin.invindex import (
    ASSIGNED,
    AVAILABLE,
    BEING_ASSIGNED,
    UNREADABLE,
    Row,
    RowIndex,
    Watermark,
    assigned_source,
    stock_source,
)
from otpgate.directory.inventory import InventoryMapper
from otpgate.directory.ldapdata import SearchEntry
from otpgate.directory.state import StateMapper
from otpgate.importers.csvfiles import parse_oath_csv
from otpgate.tokens import Secret, Token, TokenType
from otpgate.web.bodycap import MAX_BODY, CappedRequest
from otpgate.web.importpages import safe_name
from otpgate.web.invlive import LiveIndex
from otpgate.web.multipart import parse_multipart
from tests.unit.test_pipeline import KEYRING, config

INVENTORY = "ou=tokens,dc=x"


def row(serial: str, kind: str = "hotp", label: str = "") -> Row:
    return Row(serial, kind, label or serial, 0, AVAILABLE, token_id=serial)


# -- the index ---------------------------------------------------------------------------------


def test_pages_in_every_order_and_both_directions():
    index = RowIndex()
    serials = [f"S{i:04d}" for i in range(120)]
    shuffled = serials[:]
    random.shuffle(shuffled)
    for n, serial in enumerate(shuffled):
        kind = "totp" if n % 2 else "hotp"
        index.put(f"cn={serial},{INVENTORY}", b"x", [row(serial, kind, f"label {119 - int(serial[1:]):03d}")])
    assert len(index) == 120
    page, total = index.page("serial", False, "", 50, 50)
    assert total == 120 and [r.serial for r in page] == serials[50:100]
    page, _ = index.page("serial", True, "", 100, 50)
    assert [r.serial for r in page] == serials[19::-1]
    page, _ = index.page("label", False, "", 0, 3)
    assert [r.serial for r in page] == ["S0119", "S0118", "S0117"]
    page, _ = index.page("type", False, "", 0, 200)
    assert [r.kind for r in page] == sorted(r.kind for r in page)
    assert [r.serial for r in page if r.kind == "hotp"] == sorted(r.serial for r in page if r.kind == "hotp")
    page, total = index.page("serial", False, "s001", 0, 5)
    assert total == 10 and [r.serial for r in page] == serials[10:15]
    page, total = index.page("serial", False, "LABEL 119", 0, 5)
    assert total == 1 and page[0].serial == "S0000"
    assert index.page("serial", False, "", 500, 50) == ([], 120)
    assert index.page("nonsense", False, "", 0, 1)[0][0].serial == "S0000"


def test_changes_and_removals_keep_every_order_right():
    index = RowIndex()
    index.put("cn=a,x", b"1", [row("A", label="zebra")])
    index.put("cn=b,x", b"1", [row("B", label="apple")])
    assert index.fingerprint("CN=A,X") == b"1"
    index.put("cn=a,x", b"2", [row("A", label="aardvark")])  # renamed
    assert [r.serial for r in index.page("label", False, "", 0, 9)[0]] == ["A", "B"]
    index.drop("cn=a,x")
    assert [r.serial for r in index.page("label", False, "", 0, 9)[0]] == ["B"]
    assert index.find("a") == [] and index.find("b")[0].label == "apple"
    index.put("cn=c,x", b"1", [row("C")])
    index.keep_only(["CN=C,X"])
    assert index.serials() == {"c"} and len(index) == 1
    # A user's state: several rows of one entry, found by serial.
    index.put("cn=u,x", b"1", [Row("F1", "hotp", "", 0, ASSIGNED, "cn=u,x", "t1"),
                               Row("F2", "totp", "", 0, ASSIGNED, "cn=u,x", "t2")])
    assert [r.token_id for r in index.find("f2")] == ["t2"]
    index.put("cn=u,x", b"2", [Row("F2", "totp", "", 0, ASSIGNED, "cn=u,x", "t2")])
    assert index.find("F1") == [] and len(index) == 2


def test_import_clashes_from_the_index_are_the_cli_rules():
    index = RowIndex()
    key = os.urandom(20)
    from otpgate.importers import key_fingerprint

    index.put("cn=old,x", b"1", [Row("OLD", "hotp", "", 0, AVAILABLE, key=key_fingerprint(Secret(key)))])
    result = parse_oath_csv(f"old, {os.urandom(20).hex()}\nnew, {key.hex()}\nfine, {os.urandom(20).hex()}\n")
    problems = clash_problems(result, index.serials(), index.keys())
    assert [(p.row, p.message) for p in problems] == [
        (1, "serial old is already in the inventory"),
        (2, "its key is already in the inventory as serial OLD"),
    ]


@pytest.mark.parametrize("ad", [False, True])
def test_watermark_reaches_back_a_few_seconds_of_the_portals_clock(ad):
    stamps = ([b"900", b"12345", b"junk", b"5000"] if ad else
              [b"20260101120000.000000Z#000000#000#000000", b"20260101120500.1Z#000000#001#000000"])
    high = b"12345" if ad else stamps[1]
    mark = Watermark(ad, margin=5)
    assert mark.since(0) is None
    for stamp in stamps:
        mark.see(stamp)
    assert mark.since(0) is None  # nothing settled: read everything
    mark.settle(100)
    assert mark.since(101) == high  # the first read's own high
    newer = b"99999" if ad else b"20260101121000.0Z#000000#000#000000"
    mark.see(newer)
    mark.settle(102)
    assert mark.since(103) == high  # the newer high is not 5 s old yet: reach back
    assert mark.since(107) == newer  # now it is: an import read once is not read again
    mark.settle(108)
    mark.settle(120)
    assert len(mark._settled) <= 3


# -- decoding entries -------------------------------------------------------------------------


def _stock() -> InventoryMapper:
    return InventoryMapper(config(directory={"inventory_dn": INVENTORY}).directory, KEYRING)


def _stock_entry(mapper: InventoryMapper, serial: str, raw: bytes | None = b"") -> SearchEntry:
    dn = mapper.dn(serial)
    entry_id = os.urandom(8).hex().encode()
    if raw == b"":
        token = Token(id="t" + serial, type=TokenType.TOTP, created=7, serial=serial, label="L")
        raw = mapper.encode(dn, entry_id, token, Secret(os.urandom(20)))
    attributes = {"entryuuid": [entry_id], "cn": [serial.encode()]}
    if raw is not None:
        attributes[mapper.config.inventory.spec.name.lower()] = [raw]
    return SearchEntry(dn, attributes)


def test_stock_rows_available_being_assigned_and_unreadable():
    mapper = _stock()
    source = stock_source(mapper)
    (good,) = source.rows(_stock_entry(mapper, "G1"))
    assert (good.serial, good.kind, good.label, good.state) == ("G1", "totp", "L", AVAILABLE)
    assert len(good.key) == 32
    (claimed,) = source.rows(_stock_entry(mapper, "G2", None))
    assert claimed.state == BEING_ASSIGNED
    (bad,) = source.rows(_stock_entry(mapper, "G3", b"not an envelope"))
    assert bad.state == UNREADABLE
    moved = _stock_entry(mapper, "G4")
    moved.attributes["entryuuid"] = [b"another entry"]  # a value copied to another entry
    assert source.rows(moved)[0].state == UNREADABLE
    # Entries otpgate did not make are not listed: a name that is no serial, a deeper entry.
    stray = _stock_entry(mapper, "G5")
    assert source.rows(SearchEntry("cn=a b," + INVENTORY, {"cn": [b"a b"]})) == ()
    assert source.rows(SearchEntry("cn=G5,ou=sub," + INVENTORY, stray.attributes)) == ()
    assert source.rows(SearchEntry("CN=G5,OU=Tokens,DC=x", stray.attributes))[0].serial == "G5"
    index = RowIndex()
    index.put("CN=G5,OU=Tokens,DC=x", b"1", source.rows(stray))
    index.drop_serial("g5")
    assert len(index) == 0


@pytest.mark.parametrize("layout", ["user", "container"])
def test_assigned_rows_are_hardware_tokens_with_a_serial(layout):
    mapper = StateMapper(config(layout).directory, KEYRING)
    entry_id = b"8a4e3f0c-1111-4222-8333-444455556666"
    dn = (f"cn={entry_id.decode()},ou=state,dc=x" if layout == "container"
          else "uid=alice,ou=people,dc=x")
    tokens = [Token(id="h1", type=TokenType.HOTP, created=1, serial="FOB1", label="fob"),
              Token(id="a1", type=TokenType.TOTP, created=1, label="phone app")]
    values = [mapper.tokens_codec.encode(t.to_dict(), entry_id, dn) for t in tokens]
    found = SearchEntry(dn, {"cn": [entry_id] if layout == "container" else [b"alice"],
                             "entryuuid": [entry_id],
                             mapper.config.tokens.spec.name.lower(): values})
    (held,) = assigned_source(mapper).rows(found)
    assert (held.serial, held.token_id, held.holder, held.state) == ("FOB1", "h1", dn, ASSIGNED)


# -- the refresher over a fake directory -------------------------------------------------------


class FakeDirectory:
    """Answers paged searches from ``entries``; a (stamp>=X) filter returns what changed."""

    def __init__(self) -> None:
        self.entries: dict[str, SearchEntry] = {}
        self.stamp = 0
        self.searches: list[bytes] = []
        self.url = type("U", (), {"url": "ldap://fake"})()

    def write(self, found: SearchEntry) -> None:
        self.stamp += 1
        found.attributes["entrycsn"] = [f"2026010112{self.stamp:04d}.000000Z#000000#000#000000".encode()]
        self.entries[found.dn.lower()] = found

    async def connection(self) -> FakeDirectory:
        return self

    async def search_page(self, base, filter_ber, attributes, scope, size, cookie):
        self.searches.append(filter_ber)
        ge = filter_ber.find(b"entryCSN")
        since = filter_ber[ge + 10:] if ge >= 0 else b""
        found = sorted((e for e in self.entries.values()
                        if not since or e.attributes["entrycsn"][0] >= since), key=lambda e: e.dn)
        start = int(cookie or b"0")
        page = found[start:start + size]
        more = str(start + size).encode() if start + size < len(found) else b""
        return page, more


@pytest_twisted.ensureDeferred
async def test_live_index_reads_all_once_then_only_what_changed():
    mapper = _stock()
    directory = FakeDirectory()
    for n in range(1200):
        directory.write(_stock_entry(mapper, f"P{n:05d}"))
    clock = Clock()
    live = LiveIndex(directory, clock, stock_source(mapper), INVENTORY, 2,
                     ber.filter_present(b"cn"), mapper.attributes, "entryCSN", False)
    index = await live.current()
    assert len(index) == 1200 and live.reads == {"full": 1, "delta": 0, "decoded": 1200, "shown": 0}
    assert len(directory.searches) == 3  # three pages of 500
    await live.current()  # within a second: nothing read
    assert live.reads["delta"] == 0
    clock.advance(2)
    directory.write(_stock_entry(mapper, "NEW"))
    index = await live.current()
    assert live.reads["delta"] == 1 and live.reads["decoded"] == 1201 and index.find("new")
    live.changed()  # the portal wrote: read now, however soon
    await live.current()
    assert live.reads["delta"] == 2 and live.reads["decoded"] == 1201  # nothing new to decode
    # Removed elsewhere: not seen by a delta read; the full read every 5 minutes drops it.
    del directory.entries[mapper.dn("P00000").lower()]
    clock.advance(301)
    await live.current()
    assert live.reads["full"] == 2 and not index.find("P00000")
    assert live.reads["decoded"] == 1201  # nothing decoded again


# -- the upload form ---------------------------------------------------------------------------


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_keeps_the_file_byte_for_byte():
    data = b"line 1\r\nline 2\n\r\nx--XyZ is no boundary\n--XyZ nor this\r\x00\xff" + os.urandom(300)
    body = _multipart([("csrf", None, b"tok"), ("format", None, "pskc é".encode()),
                       ("file", "C:\\dir\\tokens.pskc", data)])
    form = parse_multipart(body, 'multipart/form-data; boundary="XyZ"')
    assert form is not None
    assert form.fields == {"csrf": "tok", "format": "pskc é"}
    assert form.files["file"].data == data and form.files["file"].filename == "C:\\dir\\tokens.pskc"
    assert safe_name(form.files["file"].filename) == "tokens.pskc"


@pytest.mark.parametrize(
    "body",
    [
        _multipart([("a", None, b"1")])[:-8],  # cut off: no close delimiter
        _multipart([("a", None, b"1"), ("a", None, b"2")]),  # a field twice
        _multipart([("a", None, b"\xff")]),  # not UTF-8
        _multipart([(f"f{i}", None, b"x") for i in range(11)]),  # too many parts
        b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n",  # no Content-Disposition
        b"name=value",
    ],
)
def test_multipart_refuses_what_the_form_does_not_send(body):
    assert parse_multipart(body, "multipart/form-data; boundary=XyZ") is None


def test_safe_names():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name('a"b\r\nc.csv') == "a_b__c.csv"
    assert safe_name("..") == "upload" and safe_name(".hidden") == "hidden"


# -- paged searches in the BER client ----------------------------------------------------------


def test_paged_results_control_round_trip():
    request = ber.search_request(7, b"ou=x", 2, ber.filter_present(b"cn"), (b"cn",), 0, 5,
                                 ber.paged_results_control(500, b"abc"))
    header = ber.parse_header(request)
    assert header.message_id == 7 and header.op_tag == ber.SEARCH_REQUEST
    assert ber.PAGED_RESULTS_OID in request[header.op_end:]
    cookie = os.urandom(40)
    value = ber.tlv(ber.SEQUENCE, ber._encode_int(ber.INTEGER, 0) + ber.tlv(ber.OCTET_STRING, cookie))
    control = ber.tlv(ber.SEQUENCE, ber.tlv(ber.OCTET_STRING, ber.PAGED_RESULTS_OID)
                      + ber.tlv(0x01, b"\x00") + ber.tlv(ber.OCTET_STRING, value))
    other = ber.tlv(ber.SEQUENCE, ber.tlv(ber.OCTET_STRING, b"1.2.3"))
    done = ber.message(7, ber.ldap_result(ber.SEARCH_RESULT_DONE, 0), ber.tlv(0xA0, other + control))
    assert ber.paged_results_cookie(done, ber.parse_header(done)) == cookie
    plain = ber.message(7, ber.ldap_result(ber.SEARCH_RESULT_DONE, 0))
    assert ber.paged_results_cookie(plain, ber.parse_header(plain)) == b""


# -- the body cap: larger only for a help-desk session's upload --------------------------------


class Uploads(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def body_limit(self, path, headers):  # as Portal.body_limit decides
        cookie = headers.getRawHeaders(b"cookie") or [b""]
        return 1_000_000 if path == b"/helpdesk/inventory/import" and cookie[0] == b"s=desk" else None

    def render(self, request):  # type: ignore[no-untyped-def]
        self.bodies.append(request.content.read())
        return b"ok"


@pytest.mark.parametrize(
    ("path", "cookie", "refused"),
    [
        (b"/helpdesk/inventory/import", b"s=desk", False),
        (b"/helpdesk/inventory/import", b"s=other", True),
        (b"/helpdesk/inventory/import?x", b"", True),
        (b"/signin", b"s=desk", True),
    ],
)
def test_body_cap_allows_the_upload_only_to_the_help_desk(path, cookie, refused):
    leaf = Uploads()
    site = server.Site(leaf, requestFactory=CappedRequest)
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    proto.makeConnection(transport)
    body = b"b" * (MAX_BODY * 4)
    proto.dataReceived(b"POST %s HTTP/1.1\r\nHost: x\r\nCookie: %s\r\nContent-Length: %d\r\n\r\n"
                       % (path, cookie, len(body)) + body)
    assert transport.value().startswith(b"HTTP/1.1 413 " if refused else b"HTTP/1.1 200 ")
    assert leaf.bodies == ([] if refused else [body])
