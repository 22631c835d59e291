"""A small, fast SNMP v1/v2c agent for load benchmarks: answers GET, GETNEXT and GETBULK from
.snmprec recordings (the snmpsim format), one community per recording.

snmpsim is the protocol reference the collector's correctness tests run against; it answers about
10-20 of the collector's 30-OID polls per second per process, far below the 200 polls/s that 2,000
PDUs at a 10 s interval need. This agent does only what a benchmark needs, with hand-written BER,
so the collector, not the simulated device, is what gets measured.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress

from collectors.snmp.ber import encode_integer, encode_oid_content, encode_tlv

OID = tuple[int, ...]

_TYPES = {2: 0x02, 4: 0x04, 5: 0x05, 6: 0x06, 64: 0x40, 65: 0x41, 66: 0x42, 67: 0x43, 68: 0x44, 70: 0x46}


# Encoding is the collector's own BER encoder (collectors/snmp/ber.py); only request parsing and the
# recording lookup live here.
_tlv = encode_tlv
_int = encode_integer
_uint = encode_integer  # minimal two's complement of a non-negative value is BER's unsigned form
_oid_body = encode_oid_content


def _parse_oid(s: str) -> OID:
    return tuple(int(x) for x in s.strip(".").split("."))


def _encode_value(typ: str, value: str) -> bytes:
    hexed = typ.endswith("x")
    t = int(typ.rstrip("x"))
    tag = _TYPES[t]
    if t == 2:
        return _int(int(value))
    if t in (65, 66, 67, 70):
        return _uint(int(value), tag)
    if t == 4 or t == 68:
        return _tlv(tag, bytes.fromhex(value) if hexed else value.encode("latin-1"))
    if t == 6:
        return _tlv(0x06, _oid_body(_parse_oid(value)))
    if t == 64:
        return _tlv(0x40, bytes.fromhex(value) if hexed else ipaddress.IPv4Address(value).packed)
    return _tlv(0x05, b"")


class Dataset:
    def __init__(self, text: str) -> None:
        rows: dict[OID, bytes] = {}
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            oid, typ, value = line.split("|", 2)
            try:
                rows[_parse_oid(oid)] = _encode_value(typ, value)
            except (KeyError, ValueError):
                continue  # a type this agent does not serve: as if absent
        self.oids = sorted(rows)
        self.values = rows

    def get(self, oid: OID) -> tuple[OID, bytes]:
        v = self.values.get(oid)
        return oid, v if v is not None else b"\x81\x00"  # noSuchInstance

    def next(self, oid: OID) -> tuple[OID, bytes]:
        i = bisect.bisect_right(self.oids, oid)
        if i >= len(self.oids):
            return oid, b"\x82\x00"  # endOfMibView
        o = self.oids[i]
        return o, self.values[o]


def _read(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the TLV at pos."""
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    return tag, pos, pos + n


def _decode_oid(b: bytes) -> OID:
    out = [b[0] // 40, b[0] % 40]
    arc = 0
    for x in b[1:]:
        arc = (arc << 7) | (x & 0x7F)
        if not x & 0x80:
            out.append(arc)
            arc = 0
    return tuple(out)


class Agent(asyncio.DatagramProtocol):
    def __init__(self, datasets: dict[bytes, Dataset]) -> None:
        self.datasets = datasets
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = self.answer(data)
        except (IndexError, ValueError):
            return  # malformed: real agents drop it too
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def answer(self, data: bytes) -> bytes | None:
        _, p, _end = _read(data, 0)
        _, vs, ve = _read(data, p)
        version = int.from_bytes(data[vs:ve], "big", signed=True)
        _, cs, ce = _read(data, ve)
        ds = self.datasets.get(data[cs:ce])
        if ds is None:
            return None  # wrong community: silence, as a real agent
        pdu_tag, ps, _pe = _read(data, ce)
        _, rs, re_ = _read(data, ps)
        reqid = data[rs:re_]
        _, as_, ae = _read(data, re_)
        a = int.from_bytes(data[as_:ae], "big", signed=True)
        _, bs, be = _read(data, ae)
        b = int.from_bytes(data[bs:be], "big", signed=True)
        _, ls, le = _read(data, be)
        oids: list[OID] = []
        pos = ls
        while pos < le:
            _, s, e = _read(data, pos)
            _, os_, oe = _read(data, s)
            oids.append(_decode_oid(data[os_:oe]))
            pos = e
        out: list[tuple[OID, bytes]] = []
        if pdu_tag == 0xA0:
            out = [ds.get(o) for o in oids]
        elif pdu_tag == 0xA1:
            out = [ds.next(o) for o in oids]
        elif pdu_tag == 0xA5:
            nonrep, maxrep = max(0, a), max(0, b)
            out = [ds.next(o) for o in oids[:nonrep]]
            cur = oids[nonrep:]
            for _ in range(maxrep):
                step = [ds.next(o) for o in cur]
                out += step
                cur = [o for o, _ in step]
        else:
            return None
        vbs = b"".join(_tlv(0x30, _tlv(0x06, _oid_body(o)) + v) for o, v in out)
        pdu = _tlv(0x02, reqid) + _int(0) + _int(0) + _tlv(0x30, vbs)
        return _tlv(0x30, _int(version) + _tlv(0x04, data[cs:ce]) + _tlv(0xA2, pdu))


def serve(recordings: dict[str, str], q: object, stop: object) -> None:
    """Process entry point: serve on a free UDP port of 127.0.0.1; put the port on q; run until stop."""
    parsed: dict[str, Dataset] = {}
    datasets = {c.encode(): parsed.setdefault(t, Dataset(t)) if t not in parsed else parsed[t]
                for c, t in recordings.items()}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: Agent(datasets), local_addr=("127.0.0.1", 0))
        q.put(transport.get_extra_info("sockname")[1])  # type: ignore[attr-defined]
        while not stop.is_set():  # type: ignore[attr-defined]
            await asyncio.sleep(0.2)
        transport.close()

    asyncio.run(main())
