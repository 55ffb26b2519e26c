"""otpgate.ber: framing, the few PDUs it reads and writes (cross-checked with ldaptor's
independent codec), and garbage in -> BerError out, nothing else."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ldaptor.protocols import pureber, pureldap

from otpgate import ber
from otpgate.errors import BerError


def ldaptor_decode(pdu: bytes):
    decoder = pureldap.LDAPBERDecoderContext_TopLevel(
        inherit=pureldap.LDAPBERDecoderContext_LDAPMessage(
            fallback=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext()),
            inherit=pureldap.LDAPBERDecoderContext(fallback=pureber.BERDecoderContext()),
        )
    )
    message, used = pureber.berDecodeObject(decoder, pdu)
    assert used == len(pdu)
    return message


def test_framing_partial_long_lengths_and_limits():
    pdu = ber.bind_request(7, b"uid=a", b"x" * 300)  # long-form length
    buf = ber.PduBuffer()
    buf.feed(pdu[:1])
    assert buf.next(10_000) is None
    buf.feed(pdu[1:] + pdu[:5])
    got, header = buf.next(10_000)
    assert got == pdu and header.message_id == 7 and header.op_tag == ber.BIND_REQUEST
    assert buf.next(10_000) is None
    with pytest.raises(BerError, match="above the limit"):
        buf.feed(pdu[5:])
        buf.next(100)
    with pytest.raises(BerError, match="starts with 0x30"):
        ber.next_pdu_size(b"\x31\x00", 100)
    with pytest.raises(BerError, match="length encoding"):
        ber.next_pdu_size(b"\x30\x80\x00\x00", 100)  # indefinite length is not LDAP


def test_bind_requests_simple_and_sasl():
    pdu = ber.bind_request(3, b"cn=x", b"pw123456")
    req = ber.parse_bind(pdu, ber.parse_header(pdu))
    assert (req.version, req.name, req.simple) == (3, b"cn=x", b"pw123456")
    theirs = ldaptor_decode(pdu).value
    assert (theirs.dn, theirs.auth) == (b"cn=x", b"pw123456")
    sasl = pureldap.LDAPMessage(
        pureldap.LDAPBindRequest(dn=b"", auth=(b"EXTERNAL", None), sasl=True), id=9
    ).toWire()
    req = ber.parse_bind(sasl, ber.parse_header(sasl))
    assert req.simple is None and req.sasl_mechanism == b"EXTERNAL"


def test_search_modify_add_delete_decode_in_ldaptor():
    f = ber.filter_and(ber.filter_present(b"objectClass"), ber.filter_equal(b"uid", b"a*(b)"))
    search = ldaptor_decode(ber.search_request(5, b"dc=x", 2, f, (b"uid", b"cn"), 2, 9)).value
    assert (search.baseObject, search.scope, search.sizeLimit, search.timeLimit) == (b"dc=x", 2, 2, 9)
    present, equal = list(search.filter)
    assert isinstance(search.filter, pureldap.LDAPFilter_and)
    assert isinstance(present, pureldap.LDAPFilter_present) and present.value == b"objectClass"
    assert isinstance(equal, pureldap.LDAPFilter_equalityMatch)
    assert (equal.attributeDesc.value, equal.assertionValue.value) == (b"uid", b"a*(b)")
    assert [a for a in search.attributes] == [b"uid", b"cn"]
    mod = ldaptor_decode(ber.modify_request(6, b"uid=a", [(1, b"used", (b"old",)), (0, b"used", (b"new",))])).value
    assert mod.object == b"uid=a" and len(mod.modification) == 2
    add = ldaptor_decode(ber.add_request(8, b"cn=s,dc=x", [(b"cn", (b"s",))])).value
    assert add.entry == b"cn=s,dc=x"
    delete = ldaptor_decode(ber.delete_request(10, b"cn=s,dc=x")).value
    assert delete.value == b"cn=s,dc=x"


def test_results_and_entries_from_ldaptor():
    entry = pureldap.LDAPMessage(pureldap.LDAPSearchResultEntry(
        objectName=b"uid=a,dc=x", attributes=[(b"uid", [b"a"]), (b"postalAddress", [b"v1", b"v2"])]),
        id=4).toWire()
    header = ber.parse_header(entry)
    name, attrs = ber.decode_search_entry(entry, header)
    assert name == b"uid=a,dc=x" and attrs == {"uid": [b"a"], "postaladdress": [b"v1", b"v2"]}
    done = pureldap.LDAPMessage(pureldap.LDAPModifyResponse(
        resultCode=16, matchedDN=b"", errorMessage=b"no such value"), id=4).toWire()
    assert ber.decode_result(done, ber.parse_header(done)) == (16, b"", b"no such value")
    mine = ber.message(4, ber.ldap_result(ber.BIND_RESPONSE, 49, b"invalid credentials"))
    theirs = ldaptor_decode(mine).value
    assert (theirs.resultCode, theirs.errorMessage) == (49, b"invalid credentials")


def test_start_tls_request_and_response():
    req = ber.start_tls_request(1)
    assert ber.extended_request_name(req, ber.parse_header(req)) == ber.START_TLS_OID
    resp = ber.extended_response(1, 0, ber.START_TLS_OID)
    theirs = ldaptor_decode(resp).value
    assert theirs.resultCode == 0 and theirs.responseName == ber.START_TLS_OID


@given(st.binary(max_size=300))
def test_garbage_only_ever_raises_ber_error(data):
    buf = ber.PduBuffer()
    buf.feed(data)
    try:
        while (item := buf.next(1 << 16)) is not None:
            pdu, header = item
            if header.op_tag == ber.BIND_REQUEST:
                ber.parse_bind(pdu, header)
            elif header.op_tag == ber.SEARCH_RESULT_ENTRY:
                ber.decode_search_entry(pdu, header)
            elif header.op_tag == ber.EXTENDED_RESPONSE:
                ber.decode_extended_response(pdu, header)
            elif header.op_tag == ber.EXTENDED_REQUEST:
                ber.extended_request_name(pdu, header)
            else:
                ber.decode_result(pdu, header)
    except BerError:
        pass


@given(st.integers(0, 2**31 - 1), st.binary(max_size=200), st.binary(max_size=200))
def test_bind_round_trip(mid, name, password):
    pdu = ber.bind_request(mid, name, password)
    header = ber.parse_header(pdu)
    req = ber.parse_bind(pdu, header)
    assert (header.message_id, req.name, req.simple) == (mid, name, password)


def test_bind_request_repr_hides_the_password():
    pdu = ber.bind_request(1, b"uid=alice", b"s3cret-pw123456")
    req = ber.parse_bind(pdu, ber.parse_header(pdu))
    assert req.simple == b"s3cret-pw123456"
    assert "s3cret" not in repr(req) and "s3cret" not in str(req)
    assert "uid=alice" in repr(req)


def test_extended_responses_who_am_i_and_notice_of_disconnection():
    pdu = ber.who_am_i_request(4)
    assert ber.extended_request_name(pdu, ber.parse_header(pdu)) == ber.WHO_AM_I_OID
    theirs = ldaptor_decode(pdu).value
    assert theirs.requestName == ber.WHO_AM_I_OID
    answer = ber.message(
        4, ber.ldap_result(ber.EXTENDED_RESPONSE, 0, extra=ber.tlv(0x8B, b"dn:uid=a,dc=x"))
    )
    result = ber.decode_extended_response(answer, ber.parse_header(answer))
    assert (result.code, result.name, result.value) == (0, None, b"dn:uid=a,dc=x")
    notice = ber.notice_of_disconnection(2, b"bye")
    header = ber.parse_header(notice)
    result = ber.decode_extended_response(notice, header)
    assert header.message_id == 0 and result.name == ber.NOTICE_OF_DISCONNECTION_OID
    assert (result.code, result.diagnostic) == (2, b"bye")
    with pytest.raises(BerError):
        bad = ber.message(4, ber.ldap_result(ber.EXTENDED_RESPONSE, 0, extra=b"\x99\x00"))
        ber.decode_extended_response(bad, ber.parse_header(bad))


@given(
    st.lists(st.binary(max_size=70_000), min_size=1, max_size=4),
    st.lists(st.integers(min_value=1, max_value=90_000), max_size=12),
)
def test_pdus_come_out_whole_however_the_stream_is_cut(passwords, cuts):
    """The buffer's offsets and no-copy hand-out: any concatenation of PDUs, cut anywhere,
    comes out as the same PDUs in order, and nothing is left buffered."""
    pdus = [ber.bind_request(i + 1, b"uid=a", pw) for i, pw in enumerate(passwords)]
    stream = b"".join(pdus)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    buf, out = ber.PduBuffer(), []
    for a, b in itertools.pairwise(points):
        buf.feed(stream[a:b])
        while (item := buf.next(1 << 20)) is not None:
            out.append(item)
    assert [pdu for pdu, _ in out] == pdus
    assert [h.message_id for _, h in out] == list(range(1, len(pdus) + 1))
    assert buf.buffered() == 0


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65535, 65536, 70_000])
def test_lengths_at_every_boundary_match_ldaptor(size):
    pdu = ber.bind_request(2, b"cn=x", b"p" * size)
    assert ldaptor_decode(pdu).value.auth == b"p" * size
    assert ber.next_pdu_size(pdu, 1 << 20) == len(pdu)


def test_small_and_large_message_ids_match_ldaptor():
    for mid in (1, 127, 128, 255, 256, 0x7FFFFFFF):
        pdu = ber.message(mid, ber.ldap_result(ber.BIND_RESPONSE, 0))
        assert ldaptor_decode(pdu).id == mid
        assert ber.parse_header(pdu).message_id == mid
