"""A thin asyncio SNMP client: v1/v2c discovery over pysnmp's v3arch engine, the periodic v1/v2c GET over a
hand-written BER codec (ber.py) and one shared UDP endpoint (udp.py); SNMPv3 (USM authPriv, v3.py) all
through pysnmp. Shared by every SNMP source.

Why not `pysnmp.hlapi.v3arch.asyncio.get_cmd` itself: it resolves every request varbind through the MIB
view (`ObjectType(...).resolve_with_mib`), which costs about 10 ms of CPU for a 36-OID request -- two
CPU-seconds per second at 2,000 PDUs every 10 s. With `codec="pysnmp"` this module uses the same engine,
credentials, transport target and local configuration (LCD) objects as the hlapi, but sends prebuilt
(ObjectName, Null) varbinds through `pysnmp.entity.rfc3413.cmdgen` directly. That still costs pyasn1's
BER encoding and decoding: about 1 ms of CPU plus 0.15-0.2 ms per varbind, 4.3-4.5 ms for a 30-OID
AP8641 poll, and a whole discovery of 2,000 PDUs at once (15 GETBULKs each) cannot finish in time.

So by default (`codec="fast"`) every request goes the fast path instead: encoded by `ber.RequestTemplate`
(a poll's GET once per OID list; only the request-id changes), sent on one shared asyncio UDP endpoint
per event loop (`udp.Endpoint`: replies matched by request-id and source address, tries and timeouts as
with pysnmp) and decoded by `ber.decode_response` into the same `models.Raw` values that `to_raw` below
makes of pysnmp's objects (README.md, "Efficiency"; docs/decisions.md). What the caller sees -- error
status and index, varbinds, error messages -- is the same on both paths; `tests/integration` checks
that both read identical values from every recording.

One `SnmpEngine` (one UDP socket, one timer; codec "pysnmp") or one fast endpoint (one UDP socket; codec
"fast") serves all clients of an event loop; it is created on first use and closed when the last client
closes. pysnmp has no type hints: everything it returns is turned into plain Python (`models.Raw`) here,
and this is the only module that touches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar, cast

from pyasn1.type import univ
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio.auth import CommunityData
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.hlapi.v3arch.asyncio.transport import UdpTransportTarget
from pysnmp.proto import errind, rfc1902, rfc1905

from collectors.base import SourceError
from collectors.snmp import ber, udp
from collectors.snmp import v3 as usm
from collectors.snmp.models import OID, Absent, Junk, Raw, oid_str, prefix_of
from collectors.snmp.v3 import Credentials

_NULL = univ.Null("")
_LCD = CommandGeneratorLcdConfigurator()
# request kind -> (pysnmp command generator, PDU tag of the fast path)
_GET = "GET"
_NEXT = "GETNEXT"
_BULK = "GETBULK"
_OPS: dict[str, tuple[Any, int]] = {
    _GET: (cmdgen.GetCommandGenerator(), ber.GET_REQUEST),
    _NEXT: (cmdgen.NextCommandGeneratorSingleRun(), ber.GET_NEXT_REQUEST),
    _BULK: (cmdgen.BulkCommandGeneratorSingleRun(), ber.GET_BULK_REQUEST),
}
CODECS = ("fast", "pysnmp")

# SNMP error-status values we act on (RFC 3416)
TOO_BIG = 1
NO_SUCH_NAME = 2  # SNMPv1's answer for a missing OID or the end of the MIB
MAX_WALK_ROWS = 10000  # per column: a safety stop for agents that loop


def to_raw(value: Any) -> Raw:
    """A pysnmp value -> plain Python: int, OID tuple, Absent or Junk."""
    if isinstance(value, rfc1905.NoSuchObject):
        return Absent.NO_SUCH_OBJECT
    if isinstance(value, rfc1905.NoSuchInstance):
        return Absent.NO_SUCH_INSTANCE
    if isinstance(value, rfc1905.EndOfMibView):
        return Absent.END_OF_MIB
    if isinstance(value, univ.Integer) and not isinstance(value, rfc1902.TimeTicks):
        return int(value)
    if isinstance(value, univ.ObjectIdentifier):
        return cast(OID, tuple(int(x) for x in value))
    try:
        text = str(value.prettyPrint())
    except Exception:  # a value pyasn1 cannot print is junk all the same
        text = "?"
    return Junk(type(value).__name__, repr(text[:40]))


class _Shared:
    """The engines shared by all clients of one event loop: one for every v1/v2c community (key None) and one
    per distinct SNMPv3 credential set, since pysnmp's local configuration holds one set of keys per USM user
    name (most sites use one, so one engine)."""

    loop: ClassVar[asyncio.AbstractEventLoop | None] = None
    engines: ClassVar[dict[Any, list[Any]]] = {}  # key -> [engine, users]

    @classmethod
    def acquire(cls, key: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        if cls.loop is not loop:
            cls.engines, cls.loop = {}, loop  # a stale loop's engines are dropped
        entry = cls.engines.get(key)
        if entry is None:
            entry = cls.engines[key] = [SnmpEngine(), 0]
        entry[1] += 1
        return entry[0]

    @classmethod
    def release(cls, engine: Any) -> None:
        for key, entry in list(cls.engines.items()):
            if entry[0] is not engine:
                continue
            entry[1] -= 1
            if entry[1] <= 0:
                del cls.engines[key]
                loop = cls.loop
                if loop is not None and not loop.is_closed():  # a closed loop's socket cannot be closed through it
                    engine.close_dispatcher()
            return

    @classmethod
    def current(cls, engine: Any) -> bool:
        return cls.loop is asyncio.get_running_loop() and any(e[0] is engine for e in cls.engines.values())


class SnmpClient:
    """GET / GETNEXT / GETBULK and column walks against one agent; errors are SourceError naming host:port."""

    def __init__(self, host: str, port: int, community: str, version: str, timeout_s: float, retries: int,
                 max_varbinds: int, *, codec: str = "fast", v3: Credentials | None = None) -> None:
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        if (version == "3") != (v3 is not None) or (version == "3" and codec != "pysnmp"):
            raise ValueError("SNMPv3 needs credentials and codec 'pysnmp'; v1/v2c take none")
        self.host, self.port, self.version = host, port, version
        self.where = f"snmp {host}:{port}"
        self.timeout_s, self.retries = timeout_s, retries
        self.max_varbinds = max_varbinds
        self.codec = codec
        self.v3 = v3
        self._auth = v3.pysnmp_user() if v3 is not None else CommunityData(community,
                                                                           mpModel=0 if version == "1" else 1)
        self._context = v3.context.encode() if v3 is not None else b""
        # USM users with other keys need their own engine (see _Shared); the keys stay in memory only.
        self._engine_key = (None if v3 is None else
                            (v3.user, v3.auth_protocol, v3.auth_key, v3.priv_protocol, v3.priv_key))
        self._community = community.encode("latin-1")  # as pysnmp (pyasn1's OctetString) sends it
        self._version_field = ber.VERSION_1 if version == "1" else ber.VERSION_2C
        self._target: Any = None
        self._addr: udp.Addr | None = None
        self._engine: Any = None
        self._addr_name: str | None = None
        self._endpoint: udp.Endpoint | None = None
        self._vb_cache: dict[tuple[OID, ...], list[tuple[Any, Any]]] = {}
        self._get_cache: dict[tuple[OID, ...], ber.RequestTemplate] = {}

    # ---- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Resolve the host (no packet is sent). The target joins the shared engine on the first request,
        in the event loop that makes it."""
        if self._target is not None:
            return
        try:
            target = await UdpTransportTarget.create((self.host, self.port), timeout=self.timeout_s,
                                                     retries=self.retries)
        except PySnmpError as e:
            raise SourceError(f"{self.where}: cannot resolve host ({_one_line(e)})") from None
        ip, port = target.transport_address
        self._target, self._addr = target, (str(ip), int(port))

    def _engine_for_this_loop(self) -> Any:
        """The running loop's shared engine, with this client's target registered in it."""
        if self._engine is None or not _Shared.current(self._engine):
            self._leave_engine()  # an engine of another (finished) event loop cannot serve this one
            self._engine = _Shared.acquire(self._engine_key)
            addr_name, _params = _LCD.configure(self._engine, self._auth, self._target, self._context)
            self._addr_name = str(addr_name)
        return self._engine

    def _endpoint_for_this_loop(self) -> udp.Endpoint:
        """The running loop's shared fast-path endpoint."""
        ep = self._endpoint
        if ep is None or ep.closed or ep is not udp.Shared.endpoint or ep.loop is not asyncio.get_running_loop():
            self._leave_endpoint()
            ep = self._endpoint = udp.Shared.acquire()
        return ep

    def close(self) -> None:
        """Leave the shared engine and endpoint (the last client out closes each); the resolved address is kept."""
        self._leave_engine()
        self._leave_endpoint()

    def _leave_engine(self) -> None:
        if self._engine is not None:
            _Shared.release(self._engine)
        self._engine, self._addr_name = None, None

    def _leave_endpoint(self) -> None:
        if self._endpoint is not None:
            udp.Shared.release(self._endpoint)
        self._endpoint = None

    # ---- one request -------------------------------------------------------------------------
    async def _send(self, op: str, oids: Sequence[OID], bulk: tuple[int, int] | None = None
                    ) -> tuple[int, int, list[tuple[OID, Raw]]]:
        """One request; returns (error status, error index, [(oid, raw)]). Transport errors raise."""
        if self.codec == "fast":
            return await self._send_fast(op, oids, bulk)
        return await self._send_pysnmp(op, oids, bulk)

    async def _send_pysnmp(self, op: str, oids: Sequence[OID], bulk: tuple[int, int] | None
                           ) -> tuple[int, int, list[tuple[OID, Raw]]]:
        await self.open()
        engine = self._engine_for_this_loop()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, int, int, list[tuple[OID, Raw]]]] = loop.create_future()

        def done(_engine: Any, _handle: Any, err_ind: Any, err_status: Any, err_index: Any, varbinds: Any,
                 _ctx: Any) -> None:
            if fut.done():
                return  # the caller gave up (cancelled) before the answer or timeout came
            try:
                rows = [(cast(OID, name.asTuple()), to_raw(val)) for name, val in varbinds or ()]
                fut.set_result((err_ind, int(err_status or 0), int(err_index or 0), rows))
            except Exception as e:  # never raise into pysnmp's dispatcher
                fut.set_result((f"undecodable response ({type(e).__name__}: {e})", 0, 0, []))

        gen = _OPS[op][0]
        vbs = self._varbinds(oids)
        try:
            if bulk is None:
                gen.send_varbinds(engine, self._addr_name, None, self._context, vbs, done)
            else:
                gen.send_varbinds(engine, self._addr_name, None, self._context, bulk[0], bulk[1], vbs, done)
        except PySnmpError as e:
            raise SourceError(f"{self.where}: request failed ({_one_line(e)})") from None
        err_ind, status, index, rows = await fut
        if err_ind:
            if isinstance(err_ind, errind.RequestTimedOut):
                raise self._no_response()
            why = usm.describe_failure(err_ind, self.v3.user) if self.v3 is not None else None
            raise SourceError(f"{self.where}: {why or _one_line(err_ind)}")
        return status, index, rows

    async def _send_fast(self, op: str, oids: Sequence[OID], bulk: tuple[int, int] | None
                         ) -> tuple[int, int, list[tuple[OID, Raw]]]:
        await self.open()
        assert self._addr is not None
        if op == _GET:  # a poll asks for the same OIDs every time: encoded once
            key = tuple(oids)
            template = self._get_cache.get(key)
            if template is None:
                if len(self._get_cache) >= 16:
                    self._get_cache.clear()
                template = self._get_cache[key] = ber.RequestTemplate(self._version_field, self._community, key)
        else:
            non_rep, max_rep = bulk if bulk is not None else (0, 0)
            template = ber.RequestTemplate(self._version_field, self._community, oids, _OPS[op][1], non_rep,
                                           max_rep)
        try:
            resp = await self._endpoint_for_this_loop().request(self._addr, template, self.timeout_s,
                                                                self.retries)
        except udp.NoResponse as e:
            if str(e):  # the shared socket went away under the request, not the device
                raise SourceError(f"{self.where}: request failed ({e})") from None
            raise self._no_response() from None
        except udp.Malformed as e:
            raise SourceError(f"{self.where}: malformed response to {op} ({e})") from None
        except (udp.Busy, OSError) as e:
            raise SourceError(f"{self.where}: request failed ({_one_line(e)})") from None
        if op == _BULK and not resp.error_status and not resp.varbinds:
            raise SourceError(f"{self.where}: Empty SNMP response message")  # as pysnmp's GETBULK reports it
        return resp.error_status, resp.error_index, resp.varbinds

    def _no_response(self) -> SourceError:
        tries = self.retries + 1
        hint = "wrong port or SNMPv3 credentials" if self.v3 is not None else "wrong port or community"
        return SourceError(f"{self.where}: no response within {self.timeout_s:g} s x {tries} "
                           f"tr{'y' if tries == 1 else 'ies'} (device down, {hint}?)")

    def _varbinds(self, oids: Sequence[OID]) -> list[tuple[Any, Any]]:
        """Request varbinds; a poll asks for the same OIDs every time, so they are built once."""
        key = tuple(oids)
        vbs = self._vb_cache.get(key)
        if vbs is None:
            if len(self._vb_cache) >= 16:
                self._vb_cache.clear()
            vbs = self._vb_cache[key] = [(rfc1902.ObjectName(o), _NULL) for o in oids]
        return vbs

    def _status_error(self, status: int, index: int, oids: Sequence[OID], op: str) -> SourceError:
        labels = {1: "tooBig", 2: "noSuchName", 3: "badValue", 4: "readOnly", 5: "genErr", 6: "noAccess",
                  16: "authorizationError"}
        what = labels.get(status, f"error-status {status}")
        at = f" at {oid_str(oids[index - 1])}" if 0 < index <= len(oids) else ""
        return SourceError(f"{self.where}: {op} answered {what}{at}")

    # ---- GET ----------------------------------------------------------------------------------
    async def get(self, oids: Sequence[OID]) -> dict[OID, Raw]:
        """Values of exact instances, in as few requests as `max_varbinds` allows (sent concurrently)."""
        chunks = [list(oids[i:i + self.max_varbinds]) for i in range(0, len(oids), self.max_varbinds)]
        if len(chunks) == 1:
            return await self._get_chunk(chunks[0])
        out: dict[OID, Raw] = {}
        for part in await asyncio.gather(*(self._get_chunk(c) for c in chunks)):
            out.update(part)
        return out

    async def _get_chunk(self, oids: list[OID]) -> dict[OID, Raw]:
        out: dict[OID, Raw] = {}
        pending = list(oids)
        while pending:
            status, index, rows = await self._send(_GET, pending)
            if status == 0:
                out.update(rows)
                return out
            if status == NO_SUCH_NAME and 0 < index <= len(pending):  # SNMPv1: drop the missing one, ask again
                out[pending.pop(index - 1)] = Absent.NO_SUCH_OBJECT
                continue
            if status == TOO_BIG and len(pending) > 1:
                half = len(pending) // 2
                self.max_varbinds = max(1, min(self.max_varbinds, half))
                out.update(await self._get_chunk(pending[:half]))
                out.update(await self._get_chunk(pending[half:]))
                return out
            raise self._status_error(status, index, pending, "GET")
        return out

    # ---- walks ----------------------------------------------------------------------------------
    async def next_(self, oids: Sequence[OID]) -> list[tuple[OID, Raw]]:
        """One GETNEXT, answers aligned with `oids`; a varbind past the end of the MIB comes back as
        (its request OID, END_OF_MIB)."""
        answers: dict[OID, tuple[OID, Raw]] = {}
        pending = list(oids)
        while pending:
            status, index, rows = await self._send(_NEXT, pending)
            if status == 0:
                if len(rows) != len(pending):
                    raise SourceError(f"{self.where}: GETNEXT answered {len(rows)} varbinds for {len(pending)}")
                answers.update(zip(pending, rows, strict=True))
                break
            if status == NO_SUCH_NAME and 0 < index <= len(pending):  # SNMPv1: that one ran off the end
                o = pending.pop(index - 1)
                answers[o] = (o, Absent.END_OF_MIB)
                continue
            raise self._status_error(status, index, pending, "GETNEXT")
        return [answers[o] for o in oids]

    async def walk(self, columns: Sequence[OID]) -> dict[OID, dict[OID, Raw]]:
        """Every row of each column: {column: {index: value}} in OID order. GETBULK (v2c) or GETNEXT (v1),
        all unfinished columns in each request."""
        result: dict[OID, dict[OID, Raw]] = {c: {} for c in columns}
        cursor: dict[OID, OID] = {c: c for c in columns}  # column -> last OID seen
        active = list(columns)
        while active:
            if self.version == "1":
                rows = await self.next_([cursor[c] for c in active])
                flat = list(zip(active, rows, strict=True))
            else:
                reps = max(1, self.max_varbinds // len(active))
                status, index, got = await self._send(_BULK, [cursor[c] for c in active], bulk=(0, reps))
                if status == TOO_BIG and self.max_varbinds > len(active):
                    self.max_varbinds = max(len(active), self.max_varbinds // 2)
                    continue
                if status:
                    raise self._status_error(status, index, [cursor[c] for c in active], "GETBULK")
                flat = [(active[i % len(active)], r) for i, r in enumerate(got)]
            finished: set[OID] = set()
            for col, (o, raw) in flat:
                if col in finished:
                    continue
                index_part = prefix_of(o, col)
                if index_part is None or raw is Absent.END_OF_MIB or o <= cursor[col]:
                    finished.add(col)  # left the column (or the agent went backwards: stop, do not loop)
                    continue
                result[col][index_part] = raw
                cursor[col] = o
                if len(result[col]) >= MAX_WALK_ROWS:
                    finished.add(col)
            if not flat:
                break  # an empty answer: nothing more will come
            active = [c for c in active if c not in finished]
        return result


def _one_line(x: object) -> str:
    return " ".join(str(x).split())
