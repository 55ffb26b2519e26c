"""Just enough BER for the proxy: frame LDAPMessages, read their headers, codec a few PDUs.

Hand-written on purpose: the proxy forwards every PDU except Bind/StartTLS
as the raw bytes it received (controls, referrals and message ids stay
exactly as the client and server sent them), so it only needs the framing,
the message id and the operation tag.  ldaptor's full decoder re-buffers
quadratically, asserts on malformed input and drops controls when proxying.
Everything here is pure and bounds-checked: malformed input raises BerError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from otpgate.errors import BerError

SEQUENCE = 0x30
INTEGER = 0x02
OCTET_STRING = 0x04
ENUMERATED = 0x0A

# LDAP protocol operations ([APPLICATION n], RFC 4511 §4.2-4.14).
BIND_REQUEST = 0x60
BIND_RESPONSE = 0x61
UNBIND_REQUEST = 0x42
SEARCH_REQUEST = 0x63
SEARCH_RESULT_ENTRY = 0x64
SEARCH_RESULT_DONE = 0x65
SEARCH_RESULT_REFERENCE = 0x73
MODIFY_REQUEST = 0x66
ADD_REQUEST = 0x68
DEL_REQUEST = 0x4A
MODDN_REQUEST = 0x6C
COMPARE_REQUEST = 0x6E
ABANDON_REQUEST = 0x50
EXTENDED_REQUEST = 0x77
EXTENDED_RESPONSE = 0x78
INTERMEDIATE_RESPONSE = 0x79

# The response that ends each request that has one (for answering when upstream is gone).
FINAL_RESPONSE = {
    BIND_REQUEST: BIND_RESPONSE,
    SEARCH_REQUEST: SEARCH_RESULT_DONE,
    MODIFY_REQUEST: 0x67,
    ADD_REQUEST: 0x69,
    DEL_REQUEST: 0x6B,
    MODDN_REQUEST: 0x6D,
    COMPARE_REQUEST: 0x6F,
    EXTENDED_REQUEST: EXTENDED_RESPONSE,
}

# Responses that end their operation (everything but entries, references, intermediates).
FINAL_RESPONSES = frozenset(FINAL_RESPONSE.values())

START_TLS_OID = b"1.3.6.1.4.1.1466.20037"
NOTICE_OF_DISCONNECTION_OID = b"1.3.6.1.4.1.1466.20036"
WHO_AM_I_OID = b"1.3.6.1.4.1.4203.1.11.3"


def _length(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(length, position after the length octets), or None if more data is needed."""
    if pos >= len(data):
        return None
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4:  # indefinite length is not allowed in LDAP (RFC 4511 §5.1)
        raise BerError("unsupported BER length encoding")
    if pos + 1 + count > len(data):
        return None
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def next_pdu_size(
    data: bytes | bytearray | memoryview, limit: int, available: int | None = None
) -> int | None:
    """Size of the complete LDAPMessage at the start of ``data``, None if incomplete.

    ``available``: how many bytes there are from the start of ``data`` when ``data`` is only
    a window on them.  Raises BerError for a PDU that is not a SEQUENCE or would exceed
    ``limit``.
    """
    if not data:
        return None
    if data[0] != SEQUENCE:
        raise BerError(f"an LDAPMessage starts with 0x30, not 0x{data[0]:02x}")
    header = _length(data, 1)
    if header is None:
        return None
    length, start = header
    size = start + length
    if size > limit:
        raise BerError(f"PDU of {size} bytes is above the limit of {limit}")
    return size if size <= (len(data) if available is None else available) else None


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the element at ``pos``, which must lie within ``end``."""
    if pos + 2 > end:
        raise BerError("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-byte tags are not used in LDAP")
    header = _length(data, pos + 1)
    if header is None:
        raise BerError("truncated length")
    length, start = header
    if start + length > end:
        raise BerError("element overruns its container")
    return tag, start, start + length


def _integer(data: bytes, start: int, end: int) -> int:
    if not 0 < end - start <= 4:
        raise BerError("integer out of range")
    return int.from_bytes(data[start:end], "big", signed=True)


class Header(NamedTuple):
    """Message id and operation of one LDAPMessage (a tuple: built for every PDU)."""

    message_id: int
    op_tag: int
    op_start: int
    op_end: int


def parse_header(pdu: bytes) -> Header:
    """Message id and operation of one complete LDAPMessage."""
    tag, start, end = _tlv(pdu, 0, len(pdu))
    if tag != SEQUENCE or end != len(pdu):
        raise BerError("not one LDAPMessage")
    tag, id_start, id_end = _tlv(pdu, start, end)
    if tag != INTEGER:
        raise BerError("messageID is not an INTEGER")
    message_id = _integer(pdu, id_start, id_end)
    if message_id < 0:
        raise BerError("negative messageID")
    op_tag, op_start, op_end = _tlv(pdu, id_end, end)
    return Header(message_id, op_tag, op_start, op_end)


@dataclass(frozen=True)
class BindRequest:
    version: int
    name: bytes
    simple: bytes | None = field(repr=False)
    """The simple password; None for a SASL bind.  Never in repr (logs, tracebacks)."""
    sasl_mechanism: bytes | None = None


def parse_bind(pdu: bytes, header: Header) -> BindRequest:
    data, end = pdu, header.op_end
    tag, start, stop = _tlv(data, header.op_start, end)
    if tag != INTEGER:
        raise BerError("bind version is not an INTEGER")
    version = _integer(data, start, stop)
    tag, start, name_end = _tlv(data, stop, end)
    if tag != OCTET_STRING:
        raise BerError("bind name is not an OCTET STRING")
    name = bytes(data[start:name_end])
    tag, start, stop = _tlv(data, name_end, end)
    if tag == 0x80:  # [0] simple
        return BindRequest(version, name, bytes(data[start:stop]))
    if tag == 0xA3:  # [3] SaslCredentials
        mtag, mstart, mstop = _tlv(data, start, stop)
        if mtag != OCTET_STRING:
            raise BerError("SASL mechanism is not an OCTET STRING")
        return BindRequest(version, name, None, bytes(data[mstart:mstop]))
    raise BerError(f"unknown bind authentication choice 0x{tag:02x}")


def extended_request_name(pdu: bytes, header: Header) -> bytes:
    tag, start, stop = _tlv(pdu, header.op_start, header.op_end)
    if tag != 0x80:  # [0] requestName
        raise BerError("extended request without a requestName")
    return bytes(pdu[start:stop])


@dataclass(frozen=True)
class ExtendedResult:
    code: int
    diagnostic: bytes
    name: bytes | None
    value: bytes | None


def decode_extended_response(pdu: bytes, header: Header) -> ExtendedResult:
    """An ExtendedResponse: LDAPResult, then the optional responseName [10] / responseValue [11]."""
    if header.op_tag != EXTENDED_RESPONSE:
        raise BerError(f"not an ExtendedResponse: 0x{header.op_tag:02x}")
    code, _matched, diagnostic = decode_result(pdu, header)
    # decode_result stops after diagnosticMessage: walk the remaining elements.
    pos = header.op_start
    for _ in range(3):
        _, _, pos = _tlv(pdu, pos, header.op_end)
    name = value = None
    while pos < header.op_end:
        tag, start, stop = _tlv(pdu, pos, header.op_end)
        if tag == 0x8A:
            name = bytes(pdu[start:stop])
        elif tag == 0x8B:
            value = bytes(pdu[start:stop])
        elif tag != 0xA3:  # [3] referral: ignored
            raise BerError(f"unexpected element 0x{tag:02x} in an ExtendedResponse")
        pos = stop
    return ExtendedResult(code, diagnostic, name, value)


def result_code(pdu: bytes, header: Header) -> int:
    """resultCode of an LDAPResult-shaped response."""
    tag, start, stop = _tlv(pdu, header.op_start, header.op_end)
    if tag != ENUMERATED:
        raise BerError("resultCode is not an ENUMERATED")
    return _integer(pdu, start, stop)


# -- encoding ----------------------------------------------------------------------------


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def tlv(tag: int, value: bytes) -> bytes:
    # Short forms inline: every PDU of a login is a dozen of these (measured 24 -> 12 µs for
    # the Modify of an OTP login, python -m timeit on the bench box).
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    if n < 0x100:
        return bytes((tag, 0x81, n)) + value
    if n < 0x10000:
        return bytes((tag, 0x82, n >> 8, n & 0xFF)) + value
    return bytes((tag,)) + _encode_length(n) + value


def _encode_int(tag: int, value: int) -> bytes:
    if 0 <= value < 0x80:
        return bytes((tag, 1, value))
    return tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def message(message_id: int, op: bytes, controls: bytes = b"") -> bytes:
    """An LDAPMessage; ``controls``: the encoded ``[0] Controls`` element, if any."""
    return tlv(SEQUENCE, _encode_int(INTEGER, message_id) + op + controls)


def ldap_result(
    op_tag: int, code: int, diagnostic: bytes = b"", matched_dn: bytes = b"", extra: bytes = b""
) -> bytes:
    body = (
        _encode_int(ENUMERATED, code)
        + tlv(OCTET_STRING, matched_dn)
        + tlv(OCTET_STRING, diagnostic)
        + extra
    )
    return tlv(op_tag, body)


def bind_request(message_id: int, name: bytes, password: bytes) -> bytes:
    op = tlv(BIND_REQUEST, _encode_int(INTEGER, 3) + tlv(OCTET_STRING, name) + tlv(0x80, password))
    return message(message_id, op)


def start_tls_request(message_id: int) -> bytes:
    return message(message_id, tlv(EXTENDED_REQUEST, tlv(0x80, START_TLS_OID)))


def who_am_i_request(message_id: int) -> bytes:
    """RFC 4532 "Who am I?": the server answers the connection's authorization identity."""
    return message(message_id, tlv(EXTENDED_REQUEST, tlv(0x80, WHO_AM_I_OID)))


def extended_response(
    message_id: int, code: int, name: bytes | None, diagnostic: bytes = b""
) -> bytes:
    extra = tlv(0x8A, name) if name is not None else b""
    return message(message_id, ldap_result(EXTENDED_RESPONSE, code, diagnostic, extra=extra))


def notice_of_disconnection(code: int, diagnostic: bytes) -> bytes:
    """The unsolicited notification (message id 0) a server sends before it closes (RFC 4511
    §4.4.1)."""
    return extended_response(0, code, NOTICE_OF_DISCONNECTION_OID, diagnostic)


# -- client side: requests the gateway sends, responses it reads ----------------------------


def decode_result(pdu: bytes, header: Header) -> tuple[int, bytes, bytes]:
    """(resultCode, matchedDN, diagnosticMessage) of an LDAPResult-shaped response."""
    data, end = pdu, header.op_end
    tag, start, stop = _tlv(data, header.op_start, end)
    if tag != ENUMERATED:
        raise BerError("resultCode is not an ENUMERATED")
    code = _integer(data, start, stop)
    tag, start, matched_end = _tlv(data, stop, end)
    matched = bytes(data[start:matched_end])
    tag, start, stop = _tlv(data, matched_end, end)
    return code, matched, bytes(data[start:stop])


def decode_search_entry(pdu: bytes, header: Header) -> tuple[bytes, dict[str, list[bytes]]]:
    """objectName and attributes (by lower-cased name) of a SearchResultEntry."""
    data, end = pdu, header.op_end
    tag, start, stop = _tlv(data, header.op_start, end)
    if tag != OCTET_STRING:
        raise BerError("objectName is not an OCTET STRING")
    name = bytes(data[start:stop])
    tag, pos, attrs_end = _tlv(data, stop, end)
    if tag != SEQUENCE:
        raise BerError("attributes are not a SEQUENCE")
    attributes: dict[str, list[bytes]] = {}
    while pos < attrs_end:
        tag, a_start, a_end = _tlv(data, pos, attrs_end)
        tag, t_start, t_end = _tlv(data, a_start, a_end)
        attr = data[t_start:t_end].decode("utf-8", "replace").lower()
        tag, v_pos, vals_end = _tlv(data, t_end, a_end)
        values = attributes.setdefault(attr, [])
        while v_pos < vals_end:
            _, v_start, v_end = _tlv(data, v_pos, vals_end)
            values.append(bytes(data[v_start:v_end]))
            v_pos = v_end
        pos = a_end
    return name, attributes


def _octets(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def filter_equal(attribute: bytes, value: bytes) -> bytes:
    return tlv(0xA3, _octets(attribute) + _octets(value))


def filter_and(*parts: bytes) -> bytes:
    return tlv(0xA0, b"".join(parts))


def filter_present(attribute: bytes) -> bytes:
    return tlv(0x87, attribute)


def search_request(
    message_id: int,
    base: bytes,
    scope: int,
    filter_ber: bytes,
    attributes: tuple[bytes, ...],
    size_limit: int = 0,
    time_limit: int = 0,
    controls: bytes = b"",
) -> bytes:
    body = (
        _octets(base)
        + _encode_int(ENUMERATED, scope)
        + _encode_int(ENUMERATED, 0)  # derefAliases: never
        + _encode_int(INTEGER, size_limit)
        + _encode_int(INTEGER, time_limit)
        + tlv(0x01, b"\x00")  # typesOnly FALSE
        + filter_ber
        + tlv(SEQUENCE, b"".join(_octets(a) for a in attributes))
    )
    return message(message_id, tlv(SEARCH_REQUEST, body), controls)


PAGED_RESULTS_OID = b"1.2.840.113556.1.4.319"
"""RFC 2696 simple paged results (AD answers at most MaxPageSize entries per search)."""


def paged_results_control(size: int, cookie: bytes) -> bytes:
    """The ``[0] Controls`` of a search that asks for one page of ``size`` entries
    (``cookie``: b"" for the first page, then what the previous page's answer carried).
    Not critical: a server without paging answers the whole search at once."""
    value = tlv(SEQUENCE, _encode_int(INTEGER, size) + _octets(cookie))
    return tlv(0xA0, tlv(SEQUENCE, _octets(PAGED_RESULTS_OID) + _octets(value)))


def paged_results_cookie(pdu: bytes, header: Header) -> bytes:
    """The cookie of the paged-results control of a SearchResultDone: b"" when it carries
    none (the last page, or a server that did not page)."""
    end = len(pdu)
    if header.op_end >= end:
        return b""
    tag, pos, controls_end = _tlv(pdu, header.op_end, end)
    if tag != 0xA0:
        raise BerError(f"unexpected element 0x{tag:02x} after the protocolOp")
    while pos < controls_end:
        tag, start, control_end = _tlv(pdu, pos, controls_end)
        tag, o_start, o_end = _tlv(pdu, start, control_end)
        value: bytes | None = None
        inner = o_end
        while inner < control_end:
            tag, v_start, v_end = _tlv(pdu, inner, control_end)
            if tag == OCTET_STRING:
                value = bytes(pdu[v_start:v_end])
            inner = v_end
        if pdu[o_start:o_end] == PAGED_RESULTS_OID and value is not None:
            tag, s_start, s_end = _tlv(value, 0, len(value))
            if tag != SEQUENCE:
                raise BerError("paged-results value is not a SEQUENCE")
            tag, _i_start, i_end = _tlv(value, s_start, s_end)
            tag, c_start, c_end = _tlv(value, i_end, s_end)
            if tag != OCTET_STRING:
                raise BerError("paged-results cookie is not an OCTET STRING")
            return value[c_start:c_end]
        pos = control_end
    return b""


def filter_greater_or_equal(attribute: bytes, value: bytes) -> bytes:
    """RFC 4511 greaterOrEqual filter (attribute>=value)."""
    return tlv(0xA5, _octets(attribute) + _octets(value))


def _attribute(name: bytes, values: tuple[bytes, ...]) -> bytes:
    """PartialAttribute: type and SET OF value."""
    values_set = tlv(0x31, b"".join([_octets(v) for v in values]))
    return tlv(SEQUENCE, tlv(OCTET_STRING, name) + values_set)


def _attribute_list(attributes: list[tuple[bytes, tuple[bytes, ...]]]) -> bytes:
    return b"".join([_attribute(name, values) for name, values in attributes])


def modify_request(
    message_id: int, dn: bytes, changes: list[tuple[int, bytes, tuple[bytes, ...]]]
) -> bytes:
    body = b"".join(
        [tlv(SEQUENCE, bytes((ENUMERATED, 1, op)) + _attribute(name, values))
         for op, name, values in changes]
    )
    return message(message_id, tlv(MODIFY_REQUEST, tlv(OCTET_STRING, dn) + tlv(SEQUENCE, body)))


def add_request(
    message_id: int, dn: bytes, attributes: list[tuple[bytes, tuple[bytes, ...]]]
) -> bytes:
    return message(
        message_id, tlv(ADD_REQUEST, _octets(dn) + tlv(SEQUENCE, _attribute_list(attributes)))
    )


def delete_request(message_id: int, dn: bytes) -> bytes:
    return message(message_id, tlv(DEL_REQUEST, dn))


class PduBuffer:
    """Bytes from a stream, handed out as whole LDAPMessages.

    Consumed PDUs are skipped by an offset rather than deleted from the front, and a read
    that holds exactly one whole PDU is handed out without a copy (the usual case for
    request/response traffic); a PDU that arrives in pieces is appended to a bytearray, so
    a large one is not re-buffered per read.
    """

    def __init__(self) -> None:
        self._data: bytes | bytearray = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._data):
            self._data, self._pos = data, 0
        elif isinstance(self._data, bytearray) and self._pos == 0:
            self._data += data
        else:
            self._data = bytearray(memoryview(self._data)[self._pos :]) + data
            self._pos = 0

    def next(self, limit: int) -> tuple[bytes, Header] | None:
        """The next complete PDU and its header, None until one is complete.

        Raises BerError for malformed input or a PDU above ``limit``.
        """
        data, pos = self._data, self._pos
        if pos:
            size = next_pdu_size(memoryview(data)[pos : pos + 6], limit, len(data) - pos)
        else:
            size = next_pdu_size(data, limit)
        if size is None:
            return None
        end = pos + size
        if pos == 0 and end == len(data) and type(data) is bytes:
            pdu = data
        else:
            pdu = bytes(data[pos:end])
        if end >= len(data):
            self._data, self._pos = b"", 0
        else:
            self._pos = end
        return pdu, parse_header(pdu)

    def clear(self) -> None:
        self._data, self._pos = b"", 0

    def buffered(self) -> int:
        """Bytes received but not handed out yet."""
        return len(self._data) - self._pos


def filter_or(*parts: bytes) -> bytes:
    return tlv(0xA1, b"".join(parts))


def filter_prefix(attribute: bytes, prefix: bytes) -> bytes:
    """RFC 4511 substrings filter (attribute=prefix*)."""
    return tlv(0xA4, tlv(0x04, attribute) + tlv(0x30, tlv(0x80, prefix)))


def filter_extensible(rule: bytes, attribute: bytes, value: bytes) -> bytes:
    """RFC 4511 extensibleMatch filter (attribute:rule:=value)."""
    return tlv(0xA9, tlv(0x81, rule) + tlv(0x82, attribute) + tlv(0x83, value))
