"""A small, strict BER codec for SNMP v1/v2c requests and responses (client.py's fast path), and the
notifications the trap receiver takes (`decode_notification`, trapd.py).

Only what polling and discovery need: encode a GET, GETNEXT or GETBULK request (`RequestTemplate`; a
poll's GET is encoded once per OID list, only the request-id changes between polls) and decode a
Response (`decode_response`) into the same plain values (`models.Raw`) that `client.to_raw` makes of
pysnmp's objects, so that everything downstream reads identical answers. pyasn1 decodes a 30-varbind
AP8641 answer in about 2.5-2.8 ms of CPU; this decoder takes about 0.045 ms (README.md, "Efficiency";
docs/decisions.md).

Strict means: definite lengths only, every element ends exactly where its parent says, nothing trails
the message, the outer SEQUENCE is the whole datagram, only the tags SNMP v1/v2c responses use
(INTEGER, OCTET STRING, NULL, OBJECT IDENTIFIER, IpAddress, Counter32, Gauge32, TimeTicks, Opaque,
Counter64 and the v2c exception values; no Counter64 or exception values in v1), minimal OID
sub-identifiers. Anything else raises `BerError` with a one-line reason (never IndexError): a framing
error cannot be read around. What BER itself allows and pyasn1 reads is read too: a long-form length
where the short form would do, an INTEGER with redundant leading octets. A well-framed value outside
its SMI range (a Gauge32 encoded negative, an Integer32 of 40 bits, an IpAddress of 5 octets) is not a
framing error: it becomes `Junk` naming the type and the value, so that only that reading is reported
(as NaN) while pysnmp would drop the whole message.

A little over 500 lines, long because it is the one BER codec of the package, both directions and both kinds of
message (answers to polls, traps), kept in one place so that there is one strict reader to fuzz.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collectors.snmp.models import OID, Absent, Junk, Raw

# Universal and SNMP application tags (RFC 1155 / 2578 / 3416)
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
SEQUENCE = 0x30
IP_ADDRESS = 0x40
COUNTER32 = 0x41
GAUGE32 = 0x42  # also Unsigned32
TIME_TICKS = 0x43
OPAQUE = 0x44
COUNTER64 = 0x46
NO_SUCH_OBJECT = 0x80
NO_SUCH_INSTANCE = 0x81
END_OF_MIB_VIEW = 0x82
GET_REQUEST = 0xA0
GET_NEXT_REQUEST = 0xA1
RESPONSE = 0xA2
TRAP_V1 = 0xA4  # SNMPv1 Trap-PDU (RFC 1157)
GET_BULK_REQUEST = 0xA5
INFORM_REQUEST = 0xA6
TRAP_V2 = 0xA7  # SNMPv2-Trap-PDU (RFC 3416)

VERSION_1 = 0  # the version field's value for SNMPv1
VERSION_2C = 1

# Request-ids this client uses: always exactly 4 content octets (minimal two's complement), so a
# prebuilt request only has those 4 octets replaced.
REQUEST_ID_MIN = 1 << 23
REQUEST_ID_MAX = (1 << 31) - 1

_MAX_LENGTH_OCTETS = 4  # a UDP datagram is < 64 KiB: more length octets than this is garbage
_MAX_OID_CACHE = 65536

_INT32 = (-(1 << 31), (1 << 31) - 1)
_UINT32 = (0, (1 << 32) - 1)
_UINT64 = (0, (1 << 64) - 1)
_RANGES = {INTEGER: _INT32, COUNTER32: _UINT32, GAUGE32: _UINT32, TIME_TICKS: _UINT32, COUNTER64: _UINT64}
_PLAIN_INTS = {INTEGER: _INT32, COUNTER32: _UINT32, GAUGE32: _UINT32}  # read as int in every version
_NAMES = {INTEGER: "Integer32", OCTET_STRING: "OctetString", NULL: "Null", OBJECT_IDENTIFIER: "ObjectIdentifier",
          IP_ADDRESS: "IpAddress", COUNTER32: "Counter32", GAUGE32: "Gauge32", TIME_TICKS: "TimeTicks",
          OPAQUE: "Opaque", COUNTER64: "Counter64"}
_ABSENT = {NO_SUCH_OBJECT: Absent.NO_SUCH_OBJECT, NO_SUCH_INSTANCE: Absent.NO_SUCH_INSTANCE,
           END_OF_MIB_VIEW: Absent.END_OF_MIB}


class BerError(ValueError):
    """A datagram that is not a well-formed SNMP v1/v2c response; the message is one line."""


# ---------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------
def encode_length(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"negative length {n}")
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def encode_tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(content)) + content


def encode_integer(value: int, tag: int = INTEGER) -> bytes:
    """INTEGER and the integer-based application types: minimal two's complement content octets."""
    return encode_tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def encode_oid_content(o: OID) -> bytes:
    if len(o) < 2 or o[0] > 2 or (o[0] < 2 and o[1] > 39) or any(arc < 0 for arc in o):
        raise ValueError(f"not an encodable OBJECT IDENTIFIER: {o}")
    out = bytearray()
    for arc in (40 * o[0] + o[1], *o[2:]):
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def encode_oid(o: OID) -> bytes:
    return encode_tlv(OBJECT_IDENTIFIER, encode_oid_content(o))


def encode_message(version: int, community: bytes, pdu_tag: int, request_id: int, error_status: int,
                   error_index: int, varbinds: Sequence[tuple[OID, bytes]]) -> bytes:
    """A whole v1/v2c message; each varbind value is given already encoded (e.g. b"\\x05\\x00" for NULL).
    Tests and the benchmark agent build responses with it; the client builds requests with RequestTemplate."""
    vbl = b"".join(encode_tlv(SEQUENCE, encode_oid(o) + v) for o, v in varbinds)
    pdu = (encode_integer(request_id) + encode_integer(error_status) + encode_integer(error_index)
           + encode_tlv(SEQUENCE, vbl))
    return encode_tlv(SEQUENCE, encode_integer(version) + encode_tlv(OCTET_STRING, community)
                      + encode_tlv(pdu_tag, pdu))


class RequestTemplate:
    """A request (GET, GETNEXT or GETBULK) for a fixed OID list, encoded once; `packet(request_id)` splices
    in the request-id. For GETBULK the error-status and error-index fields carry non-repeaters and
    max-repetitions (RFC 3416)."""

    __slots__ = ("community", "head", "oids", "pdu_tag", "tail", "version")

    def __init__(self, version: int, community: bytes, oids: Sequence[OID], pdu_tag: int = GET_REQUEST,
                 non_repeaters: int = 0, max_repetitions: int = 0) -> None:
        if version not in (VERSION_1, VERSION_2C):
            raise ValueError(f"SNMP version field {version} is neither v1 (0) nor v2c (1)")
        if pdu_tag not in (GET_REQUEST, GET_NEXT_REQUEST, GET_BULK_REQUEST):
            raise ValueError(f"PDU tag 0x{pdu_tag:02x} is not GET, GETNEXT or GETBULK")
        if pdu_tag == GET_BULK_REQUEST and version == VERSION_1:
            raise ValueError("GETBULK does not exist in SNMPv1")
        if pdu_tag != GET_BULK_REQUEST and (non_repeaters or max_repetitions):
            raise ValueError("non-repeaters and max-repetitions are for GETBULK only")
        self.version, self.community, self.oids, self.pdu_tag = version, community, tuple(oids), pdu_tag
        vbl = b"".join(encode_tlv(SEQUENCE, encode_oid(o) + b"\x05\x00") for o in self.oids)
        tail = encode_integer(non_repeaters) + encode_integer(max_repetitions) + encode_tlv(SEQUENCE, vbl)
        pdu_len = 6 + len(tail)  # the request-id: 02 04 + 4 octets
        pdu_head = bytes((pdu_tag,)) + encode_length(pdu_len)
        inner = encode_integer(version) + encode_tlv(OCTET_STRING, community)
        msg_len = len(inner) + len(pdu_head) + pdu_len
        self.head = bytes((SEQUENCE,)) + encode_length(msg_len) + inner + pdu_head + b"\x02\x04"
        self.tail = tail

    def packet(self, request_id: int) -> bytes:
        if not REQUEST_ID_MIN <= request_id <= REQUEST_ID_MAX:
            raise ValueError(f"request-id {request_id} outside [{REQUEST_ID_MIN}, {REQUEST_ID_MAX}]")
        return self.head + request_id.to_bytes(4, "big") + self.tail


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """What identifies a response: enough to find the request it answers before decoding the rest."""

    version: int
    community: bytes
    pdu_tag: int
    request_id: int


@dataclass(frozen=True)
class Response:
    version: int
    community: bytes
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[tuple[OID, Raw]]


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at `pos`, which must lie within [pos, end)."""
    if pos + 2 > end:
        raise BerError(f"truncated at byte {pos}: element header needs 2 bytes, {end - pos} left")
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0:
            raise BerError(f"indefinite length at byte {pos - 1} (tag 0x{tag:02x})")
        if k > _MAX_LENGTH_OCTETS:
            raise BerError(f"length of {k} octets at byte {pos - 1} (tag 0x{tag:02x})")
        if pos + k > end:
            raise BerError(f"truncated at byte {pos}: length octets of tag 0x{tag:02x}")
        n = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    if pos + n > end:
        raise BerError(f"truncated: tag 0x{tag:02x} at byte {pos} declares {n} content bytes, {end - pos} left")
    return tag, pos, pos + n


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    t, s, e = _tlv(data, pos, end)
    if t != tag:
        raise BerError(f"{what}: expected tag 0x{tag:02x}, got 0x{t:02x} at byte {pos}")
    return s, e


def _int(data: bytes, s: int, e: int, what: str) -> int:
    if s == e:
        raise BerError(f"{what}: INTEGER with no content octets")
    return int.from_bytes(data[s:e], "big", signed=True)


_oid_cache: dict[bytes, OID] = {}


def decode_oid(content: bytes) -> OID:
    """OBJECT IDENTIFIER content octets -> arcs. Minimal sub-identifiers only (no leading 0x80)."""
    o = _oid_cache.get(content)
    if o is not None:
        return o
    if not content:
        raise BerError("OBJECT IDENTIFIER with no content octets")
    if content[-1] & 0x80:
        raise BerError("OBJECT IDENTIFIER ends inside a sub-identifier")
    arcs: list[int] = []
    arc = 0
    start = True
    for b in content:
        if start and b == 0x80:
            raise BerError("OBJECT IDENTIFIER sub-identifier with a leading 0x80 (not minimal)")
        arc = (arc << 7) | (b & 0x7F)
        start = not b & 0x80
        if start:
            arcs.append(arc)
            arc = 0
    first = arcs[0]
    head = (first // 40, first % 40) if first < 80 else (2, first - 80)
    o = (*head, *arcs[1:])
    if len(_oid_cache) >= _MAX_OID_CACHE:
        _oid_cache.clear()
    _oid_cache[bytes(content)] = o
    return o


def pretty_octets(b: bytes) -> str:
    """pysnmp's text for an OctetString / Opaque: the characters if all are printable ASCII, else 0x<hex>."""
    if all(32 <= x <= 126 for x in b):
        return b.decode("ascii")
    return "0x" + b.hex()


def _junk(type_name: str, text: str) -> Junk:
    return Junk(type_name, repr(text[:40]))


def _out_of_range(tag: int, v: int) -> Junk:
    lo, hi = _RANGES[tag]
    text = str(v) if v.bit_length() <= 72 else f"a {v.bit_length()}-bit number"
    return Junk(_NAMES[tag], f"{text} (outside {lo}..{hi})")


def decode_value(tag: int, content: bytes, version: int = VERSION_2C) -> Raw:
    """One varbind value -> Raw, as `client.to_raw` turns pysnmp's decoding of it."""
    rng = _RANGES.get(tag)
    if rng is not None:
        if not content:
            raise BerError(f"{_NAMES[tag]} with no content octets")
        if tag == COUNTER64 and version == VERSION_1:
            raise BerError("Counter64 in an SNMPv1 message")
        v = int.from_bytes(content, "big", signed=True)
        if not rng[0] <= v <= rng[1]:
            return _out_of_range(tag, v)
        if tag == TIME_TICKS:
            return _junk("TimeTicks", str(v))  # a time is not a meter reading
        return v
    if tag in (OCTET_STRING, OPAQUE):
        return _junk(_NAMES[tag], pretty_octets(content))
    if tag == OBJECT_IDENTIFIER:
        return decode_oid(content)
    if tag == IP_ADDRESS:
        if len(content) != 4:
            return Junk("IpAddress", f"{len(content)} octets 0x{content.hex()[:24]} (an address has 4)")
        return _junk("IpAddress", ".".join(str(x) for x in content))
    if tag == NULL:
        if content:
            raise BerError(f"NULL with {len(content)} content octets")
        return _junk("Null", "")
    absent = _ABSENT.get(tag)
    if absent is not None:
        if version == VERSION_1:
            raise BerError(f"{absent.value} in an SNMPv1 message")
        if content:
            raise BerError(f"{absent.value} with {len(content)} content octets")
        return absent
    raise BerError(f"unknown value tag 0x{tag:02x}")


def decode_header(data: bytes) -> Header:
    """Version, community, PDU tag and request-id, reading no further; lenient about the lengths of the
    message and the PDU (so that a truncated answer can still be matched to its request and reported)."""
    if not data:
        raise BerError("empty datagram")
    try:
        end = len(data)
        tag, pos, _ = _tlv_lenient(data, 0, end)
        if tag != SEQUENCE:
            raise BerError(f"message: expected tag 0x30, got 0x{tag:02x}")
        s, e = _expect(data, pos, end, INTEGER, "version")
        version = _int(data, s, e, "version")
        s, pos = _expect(data, e, end, OCTET_STRING, "community")
        community = data[s:pos]
        pdu_tag, pos, _ = _tlv_lenient(data, pos, end)
        s, e = _expect(data, pos, end, INTEGER, "request-id")
        return Header(version, community, pdu_tag, _int(data, s, e, "request-id"))
    except IndexError:  # _tlv checks bounds; this is a second fence, never a crash
        raise BerError("truncated") from None


def _tlv_lenient(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Like _tlv, but the declared content may run past the datagram (the header of a container)."""
    if pos + 2 > end:
        raise BerError(f"truncated at byte {pos}: element header needs 2 bytes, {end - pos} left")
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > _MAX_LENGTH_OCTETS or pos + k > end:
            raise BerError(f"bad length octets at byte {pos - 1} (tag 0x{tag:02x})")
        n = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    return tag, pos, pos + n


def decode_response(data: bytes) -> Response:
    """A whole SNMP v1/v2c Response message; BerError (one line) for anything malformed."""
    try:
        return _decode_response(data)
    except IndexError:  # _tlv checks bounds; this is a second fence, never a crash
        raise BerError("truncated") from None


def _message(data: bytes) -> tuple[int, bytes, int, int, int, int]:
    """The v1/v2c message around a PDU: (version, community, PDU tag, PDU start, PDU end, message end)."""
    n = len(data)
    if not n:
        raise BerError("empty datagram")
    tag, pos, end = _tlv(data, 0, n)
    if tag != SEQUENCE:
        raise BerError(f"message: expected tag 0x30, got 0x{tag:02x}")
    if end != n:
        raise BerError(f"{n - end} bytes after the end of the message")
    s, e = _expect(data, pos, end, INTEGER, "version")
    version = _int(data, s, e, "version")
    if version not in (VERSION_1, VERSION_2C):
        raise BerError(f"version field {version} is neither SNMPv1 (0) nor SNMPv2c (1)")
    s, pos = _expect(data, e, end, OCTET_STRING, "community")
    community = bytes(data[s:pos])
    tag, pos, pdu_end = _tlv(data, pos, end)
    return version, community, tag, pos, pdu_end, end


def _decode_response(data: bytes) -> Response:
    version, community, tag, pos, pdu_end, end = _message(data)
    if tag != RESPONSE:
        raise BerError(f"PDU tag 0x{tag:02x} is not a Response (0xa2)")
    if pdu_end != end:
        raise BerError(f"{end - pdu_end} bytes after the PDU")
    s, e = _expect(data, pos, pdu_end, INTEGER, "request-id")
    request_id = _int(data, s, e, "request-id")
    s, e = _expect(data, e, pdu_end, INTEGER, "error-status")
    status = _int(data, s, e, "error-status")
    s, e = _expect(data, e, pdu_end, INTEGER, "error-index")
    index = _int(data, s, e, "error-index")
    pos, vbl_end = _expect(data, e, pdu_end, SEQUENCE, "varbind list")
    if vbl_end != pdu_end:
        raise BerError(f"{pdu_end - vbl_end} bytes after the varbind list")
    varbinds: list[tuple[OID, Raw]] = []
    append = varbinds.append
    cache = _oid_cache
    while pos < vbl_end:
        try:
            vs, vb_end = _expect(data, pos, vbl_end, SEQUENCE, "varbind")
            os_, oe = _expect(data, vs, vb_end, OBJECT_IDENTIFIER, "name")
            raw_name = data[os_:oe]
            name = cache.get(raw_name)
            if name is None:
                name = decode_oid(raw_name)
            vtag, cs, ce = _tlv(data, oe, vb_end)
            if ce != vb_end:
                raise BerError(f"{vb_end - ce} bytes after the value")
            rng = _PLAIN_INTS.get(vtag)
            if rng is not None:  # the common case (Integer32, Gauge32, Counter32), inline
                if cs == ce:
                    raise BerError(f"{_NAMES[vtag]} with no content octets")
                v = int.from_bytes(data[cs:ce], "big", signed=True)
                append((name, v if rng[0] <= v <= rng[1] else _out_of_range(vtag, v)))
            else:
                append((name, decode_value(vtag, data[cs:ce], version)))
        except BerError as e:
            raise BerError(f"varbind {len(varbinds) + 1}: {e}") from None
        pos = vb_end
    return Response(version, bytes(community), request_id, status, index, varbinds)


# ---------------------------------------------------------------------------------------------------
# Notifications (the trap receiver)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Notification:
    """A v1 or v2c trap (or inform) as it came: each varbind value still raw (tag, content octets), so that
    the receiver reads octet strings as bytes (sysName) and numbers and OIDs with `decode_value`. A v1
    Trap-PDU carries its enterprise, agent address, generic and specific trap; `trap_oid` is then what
    RFC 3584 (3.1) makes of them, so v1 and v2c traps are read alike."""

    version: int
    community: bytes
    pdu_tag: int
    trap_oid: OID | None  # snmpTrapOID.0 (v2c), or the RFC 3584 translation (v1); None if absent
    varbinds: list[tuple[OID, int, bytes]]


SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)  # snmpTrapOID.0
_GENERIC_TRAPS = (1, 3, 6, 1, 6, 3, 1, 1, 5)  # snmpTraps: coldStart(1) .. enterpriseSpecific(6) is not here


def message_version(data: bytes) -> int:
    """The version field of any SNMP message (0 v1, 1 v2c, 3 v3), reading nothing after it."""
    try:
        tag, pos, _ = _tlv_lenient(data, 0, len(data))
        if tag != SEQUENCE:
            raise BerError(f"message: expected tag 0x30, got 0x{tag:02x}")
        s, e = _expect(data, pos, len(data), INTEGER, "version")
        return _int(data, s, e, "version")
    except IndexError:
        raise BerError("truncated") from None


def decode_notification(data: bytes) -> Notification:
    """A whole SNMP v1 Trap, v2c Trap or Inform message; BerError (one line) for anything malformed."""
    try:
        return _decode_notification(data)
    except IndexError:  # _tlv checks bounds; this is a second fence, never a crash
        raise BerError("truncated") from None


def _varbinds(data: bytes, pos: int, end: int) -> list[tuple[OID, int, bytes]]:
    out: list[tuple[OID, int, bytes]] = []
    while pos < end:
        try:
            vs, vb_end = _expect(data, pos, end, SEQUENCE, "varbind")
            os_, oe = _expect(data, vs, vb_end, OBJECT_IDENTIFIER, "name")
            vtag, cs, ce = _tlv(data, oe, vb_end)
            if ce != vb_end:
                raise BerError(f"{vb_end - ce} bytes after the value")
            out.append((decode_oid(data[os_:oe]), vtag, bytes(data[cs:ce])))
        except BerError as e:
            raise BerError(f"varbind {len(out) + 1}: {e}") from None
        pos = vb_end
    return out


def _decode_notification(data: bytes) -> Notification:
    version, community, tag, pos, pdu_end, end = _message(data)
    if pdu_end != end:
        raise BerError(f"{end - pdu_end} bytes after the PDU")
    if tag == TRAP_V1 and version == VERSION_1:
        return _v1_trap(data, pos, pdu_end, community)
    if tag not in (TRAP_V2, INFORM_REQUEST) or version != VERSION_2C:
        raise BerError(f"PDU tag 0x{tag:02x} in an SNMP{'v1' if version == VERSION_1 else 'v2c'} message is "
                       f"not a notification")
    for what in ("request-id", "error-status", "error-index"):
        s, pos = _expect(data, pos, pdu_end, INTEGER, what)
    s, vbl_end = _expect(data, pos, pdu_end, SEQUENCE, "varbind list")
    if vbl_end != pdu_end:
        raise BerError(f"{pdu_end - vbl_end} bytes after the varbind list")
    vbs = _varbinds(data, s, vbl_end)
    # RFC 3416 4.2.6: sysUpTime.0 first, snmpTrapOID.0 second; read it wherever it is
    trap_oid = next((decode_oid(c) for o, t, c in vbs if o == SNMP_TRAP_OID and t == OBJECT_IDENTIFIER), None)
    return Notification(version, community, tag, trap_oid, vbs)


def _v1_trap(data: bytes, pos: int, end: int, community: bytes) -> Notification:
    s, e = _expect(data, pos, end, OBJECT_IDENTIFIER, "enterprise")
    enterprise = decode_oid(data[s:e])
    s, e = _expect(data, e, end, IP_ADDRESS, "agent-addr")
    s, e = _expect(data, e, end, INTEGER, "generic-trap")
    generic = _int(data, s, e, "generic-trap")
    s, e = _expect(data, e, end, INTEGER, "specific-trap")
    specific = _int(data, s, e, "specific-trap")
    s, e = _expect(data, e, end, TIME_TICKS, "time-stamp")
    s, vbl_end = _expect(data, e, end, SEQUENCE, "varbind list")
    if vbl_end != end:
        raise BerError(f"{end - vbl_end} bytes after the varbind list")
    # RFC 3584 3.1 (3): enterpriseSpecific -> enterprise.0.specific; a generic trap -> snmpTraps.(generic+1)
    trap_oid = (*enterprise, 0, specific) if generic == 6 else (*_GENERIC_TRAPS, generic + 1)
    return Notification(VERSION_1, community, TRAP_V1, trap_oid, _varbinds(data, s, vbl_end))
