"""Versioned wire records shared by every stage.

Encoding (chosen by measurement, see docs/performance.md and bench/bench_decode.py): a MessagePack
map whose per-GPU arrays are raw little-endian bytes, so decoding a 72-GPU frame is one msgpack call
plus one zero-copy np.frombuffer per array. Every record carries `schema` and `v`; a decoder refuses
versions it does not know, with a reason that goes to the dead-letter topic.

Conventions: units in names (power_w, temp_c, limit_w); float fields are always floats on the wire;
a missing reading is NaN (arrays) or None (scalars), never 0.

This module is long because it is the wire contract: every record type with its encode, decode and checks
in one file, read next to docs/topics.md, so a change to the contract is one diff in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]

T = TypeVar("T", bound="Record")
TS_RANGE = (0.0, 1e11)  # event times: seconds since the epoch, finite, not before 1970 nor after year 5138
SEQ_RANGE = (0.0, float(2**63 - 1))


class SchemaError(ValueError):
    """A record that does not match its schema; the message names the record and the field."""


# Field kinds: how each dataclass field is encoded and checked.
_ARRAY_DTYPES: dict[str, np.dtype[Any]] = {
    "f32[]": np.dtype("<f4"), "f64[]": np.dtype("<f8"), "u16[]": np.dtype("<u2"), "u32[]": np.dtype("<u4"),
}


@dataclass
class Record:
    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    KINDS: ClassVar[dict[str, str]] = {}
    # Inclusive ranges for float arrays, float and int scalars. NaN is allowed in arrays and lists (it means
    # "missing"); a float scalar must be finite (a missing scalar is None, never NaN).
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {}
    # Float arrays where NaN is not "missing" but wrong (timestamps, computed loads).
    FINITE: ClassVar[frozenset[str]] = frozenset()

    def ident(self) -> str:
        return self.SCHEMA

    # ---- encoding ---------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.SCHEMA, "v": self.VERSION}
        for name, optional, dtype, is_float in self._wire_plan():  # cached per class: encoding is a hot path
            val = getattr(self, name)
            if val is None:
                if optional:
                    continue  # absent optional field: not on the wire at all (smaller, faster)
                out[name] = None
            elif dtype is not None:
                out[name] = np.ascontiguousarray(val, dtype=dtype).tobytes()
            else:
                out[name] = float(val) if is_float else val
        return out

    @classmethod
    def _wire_plan(cls) -> list[tuple[str, bool, np.dtype[Any] | None, bool]]:
        """(field, optional, array dtype, is a float scalar) per field, computed once per class."""
        plan = cls.__dict__.get("_WIRE_PLAN")
        if plan is None:
            plan = [(name, optional, _ARRAY_DTYPES.get(kind.rstrip("?")), kind.rstrip("?") == "float")
                    for name, kind, optional, _ in cls._plan()]
            cls._WIRE_PLAN = plan  # type: ignore[attr-defined]
        return plan

    def encode(self) -> bytes:
        return bytes(msgpack.packb(self.to_wire(), use_bin_type=True))

    # ---- decoding ---------------------------------------------------------------------
    @classmethod
    def from_wire(cls: type[T], d: Any, array_ranges: bool = True) -> T:
        if not isinstance(d, dict):
            raise SchemaError(f"{cls.SCHEMA}: expected a map, got {type(d).__name__}")
        where = f"{cls.SCHEMA} {d.get(cls.key_field(), '?')}"
        name = d.get("schema")
        if name != cls.SCHEMA:
            raise SchemaError(f"{where}: field 'schema' = {name!r}, expected '{cls.SCHEMA}'")
        if type(d.get("v")) is not int or d.get("v") != cls.VERSION:  # True == 1 in Python: a bool is no version
            raise SchemaError(f"{where}: field 'v' = {d.get('v')!r}: unsupported version (this build reads "
                              f"v{cls.VERSION})")
        kw: dict[str, Any] = {}
        finite = cls.FINITE
        for fname, base, optional, rng in cls._read_plan():
            v = d.get(fname)
            if v is None:
                if optional:
                    kw[fname] = None
                    continue
                raise SchemaError(f"{where}: field '{fname}' missing")
            kw[fname] = _check(where, fname, base, v, rng if array_ranges or base not in _ARRAY_DTYPES else None)
            if finite and fname in finite and not np.isfinite(kw[fname]).all():
                i = int(np.flatnonzero(~np.isfinite(kw[fname]))[0])
                raise SchemaError(f"{where}: field '{fname}'[{i}] = {kw[fname][i]:g} is not a finite number")
        rec = cls(**kw)
        rec.validate(where)
        return rec

    @classmethod
    def _plan(cls) -> list[tuple[str, str, bool, tuple[float, float] | None]]:
        """(field, kind, optional, range) per field, computed once per class: decoding is a hot path."""
        plan = cls.__dict__.get("_PLAN")
        if plan is None:
            plan = [(f.name, cls.KINDS[f.name], cls.KINDS[f.name].endswith("?"), cls.RANGES.get(f.name))
                    for f in fields(cls)]
            cls._PLAN = plan  # type: ignore[attr-defined]
        return plan

    @classmethod
    def _read_plan(cls) -> list[tuple[str, str, bool, tuple[float, float] | None]]:
        """_plan with each kind's base (no '?'), computed once per class."""
        plan = cls.__dict__.get("_READ_PLAN")
        if plan is None:
            plan = [(name, kind.rstrip("?"), optional, rng) for name, kind, optional, rng in cls._plan()]
            cls._READ_PLAN = plan  # type: ignore[attr-defined]
        return plan

    @classmethod
    def decode(cls: type[T], data: bytes) -> T:
        return cls.from_wire(cls._unpack(data))

    @classmethod
    def decode_many(cls: type[T], values: Sequence[bytes]) -> list[T | SchemaError]:
        """decode() of every value, each record or its error: the fields are checked column by column over the
        batch (powerplane.wire_columns); a record that fails any check is decoded again on its own, so its error
        is exactly the one decode() gives."""
        from powerplane.wire_columns import decode_many  # it builds on this module: imported when first used

        return decode_many(cls, values)

    @classmethod
    def _unpack(cls, data: bytes) -> Any:
        try:
            return msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException, TypeError) as e:
            raise SchemaError(f"{cls.SCHEMA}: not a MessagePack record ({type(e).__name__}: {e})") from None

    @classmethod
    def _error(cls, data: bytes) -> SchemaError:
        try:
            cls.decode(data)
        except SchemaError as e:
            return e
        raise AssertionError(f"{cls.SCHEMA}: decode_many refused a record decode() takes")

    @classmethod
    def key_field(cls) -> str:
        return "id"

    def validate(self, where: str) -> None:
        """Cross-field checks; subclasses extend."""



def _check(where: str, name: str, base: str, v: Any, rng: tuple[float, float] | None) -> Any:
    """A present (not None) field's value checked against its kind (without '?') and range."""
    dt = _ARRAY_DTYPES.get(base)
    if dt is not None:
        if not (type(v) is bytes or isinstance(v, bytearray)) or len(v) % dt.itemsize:
            raise SchemaError(f"{where}: field '{name}' must be {base} packed bytes")
        arr = np.frombuffer(v, dtype=dt)
        if rng is not None and base in ("f32[]", "f64[]"):
            lo, hi = rng
            # Fast path: min/max of a clean array. NaN (a missing reading, allowed) makes min/max NaN,
            # which fails the comparison and takes the exact path below.
            if arr.size and not (lo <= arr.min() and arr.max() <= hi):
                bad = ~((arr >= lo) & (arr <= hi)) & ~np.isnan(arr)
            else:
                bad = np.zeros(0, dtype=bool)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise SchemaError(f"{where}: field '{name}'[{i}] = {arr[i]:g} out of range [{lo:g}, {hi:g}]")
        return arr
    if base == "float":
        if type(v) is not float and (isinstance(v, bool) or not isinstance(v, float | int)):
            raise SchemaError(f"{where}: field '{name}' must be a float, got {type(v).__name__}")
        fv = float(v)
        if not math.isfinite(fv):  # every consumer would crash or be fooled: a NaN time, an inf load
            raise SchemaError(f"{where}: field '{name}' = {fv:g} is not a finite number")
        if rng is not None and not (rng[0] <= fv <= rng[1]):
            raise SchemaError(f"{where}: field '{name}' = {fv:g} out of range [{rng[0]:g}, {rng[1]:g}]")
        return fv
    if base == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise SchemaError(f"{where}: field '{name}' must be an integer, got {type(v).__name__}")
        if rng is not None and not (rng[0] <= v <= rng[1]):
            raise SchemaError(f"{where}: field '{name}' = {v} out of range [{rng[0]:g}, {rng[1]:g}]")
        return v
    if base == "bool":
        if type(v) is not bool:
            raise SchemaError(f"{where}: field '{name}' must be true or false, got {type(v).__name__}")
        return v
    if base == "str":
        if not isinstance(v, str):
            raise SchemaError(f"{where}: field '{name}' must be a string, got {type(v).__name__}")
        return v
    if base == "f64list":
        if type(v) is not list or not all(type(x) is float or x is None or (isinstance(x, int) and not isinstance(
                x, bool)) for x in v):
            raise SchemaError(f"{where}: field '{name}' must be a list of floats")
        out = [math.nan if x is None else float(x) for x in v]
        if any(math.isinf(x) for x in out):  # NaN is a missing reading; inf is no reading at all
            raise SchemaError(f"{where}: field '{name}' = {out} holds an infinite value")
        return out
    if base == "strlist":
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise SchemaError(f"{where}: field '{name}' must be a list of strings")
        return v
    if base == "map":
        if not isinstance(v, dict):
            raise SchemaError(f"{where}: field '{name}' must be a map")
        return v
    raise AssertionError(base)


# ======================================================================================
# Records
# ======================================================================================


@dataclass
class TelemetryFrame(Record):
    """One rack, one sample interval: every GPU's readings, the rack inlet and PDU meters."""

    SCHEMA: ClassVar[str] = "telemetry.frame"
    KINDS: ClassVar[dict[str, str]] = {
        "site": "str", "rack": "str", "ts_s": "float", "interval_s": "float", "seq": "int", "source": "str",
        "gpu_server": "u16[]", "gpu_slot": "u16[]", "power_w": "f32[]", "temp_c": "f32[]",
        "sm_clock_mhz": "f32[]", "limit_w": "f32[]", "util": "f32[]",
        "inlet_c": "f64list", "pdu_power_w": "f64list",
        # Optional, from collectors that read them (NVML, Redfish); absent from the simulated fleet.
        "mem_clock_mhz": "f32[]?", "throttle_reasons": "u32[]?", "energy_j": "f64[]?",
        "servers": "u16[]?", "server_power_w": "f32[]?",
        "pdu_phase_current_a": "f32[]?", "pdu_bank_current_a": "f32[]?", "pdu_outlet_power_w": "f32[]?",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "power_w": (0.0, 5000.0), "temp_c": (-40.0, 150.0), "sm_clock_mhz": (0.0, 10000.0),
        "limit_w": (0.0, 5000.0), "util": (0.0, 1.0), "ts_s": TS_RANGE, "interval_s": (1e-3, 3600.0), "seq": SEQ_RANGE,
        "mem_clock_mhz": (0.0, 20000.0), "energy_j": (0.0, 1e15), "server_power_w": (0.0, 100000.0),
        "pdu_phase_current_a": (0.0, 10000.0), "pdu_bank_current_a": (0.0, 10000.0),
        "pdu_outlet_power_w": (0.0, 100000.0),
    }
    site: str
    rack: str
    ts_s: float  # event time: end of the sample interval, seconds since the epoch
    interval_s: float
    seq: int  # per-rack sequence number, so gaps and duplicates are visible downstream
    source: str
    gpu_server: U16  # server index within the rack
    gpu_slot: U16  # GPU index within the server
    power_w: F32
    temp_c: F32
    sm_clock_mhz: F32
    limit_w: F32  # the enforced power limit, not the requested one
    util: F32
    inlet_c: list[float]  # one per inlet sensor; NaN = no reading
    pdu_power_w: list[float]  # metered power of the rack PDU on feed A and B; NaN = no meter
    mem_clock_mhz: F32 | None = None
    # NVML clocks-event (throttle) reason bitmask per GPU; 0xFFFFFFFF = no reading for that GPU (an
    # integer cannot be NaN; NVML defines no bit above 0x400).
    throttle_reasons: U32 | None = None
    energy_j: F64 | None = None  # GPU energy counter since driver load, joules
    servers: U16 | None = None  # server index within the rack, for server_power_w
    server_power_w: F32 | None = None  # server input power from its BMC (Redfish)
    # A frame from one rack PDU carries that PDU's meter in pdu_power_w (the other feed NaN) and, where the
    # PDU reports them, its per-phase and per-bank currents and per-outlet power here.
    pdu_phase_current_a: F32 | None = None
    pdu_bank_current_a: F32 | None = None
    pdu_outlet_power_w: F32 | None = None

    @classmethod
    def key_field(cls) -> str:
        return "rack"

    def key(self) -> bytes:
        return self.rack.encode()

    def validate(self, where: str) -> None:
        n = self.power_w.size
        for name in ("gpu_server", "gpu_slot", "temp_c", "sm_clock_mhz", "limit_w", "util"):
            m = getattr(self, name).size
            if m != n:
                raise SchemaError(f"{where}: field '{name}' has {m} entries, power_w has {n}")
        for name in ("mem_clock_mhz", "throttle_reasons", "energy_j"):
            arr = getattr(self, name)
            if arr is not None and arr.size != n:
                raise SchemaError(f"{where}: field '{name}' has {arr.size} entries, power_w has {n}")
        if (self.servers is None) != (self.server_power_w is None) or (
                self.servers is not None and self.server_power_w is not None
                and self.servers.size != self.server_power_w.size):
            raise SchemaError(f"{where}: fields 'servers' and 'server_power_w' must come together, same length")
        if len(self.pdu_power_w) != 2:
            raise SchemaError(f"{where}: field 'pdu_power_w' needs 2 entries (feed A, feed B), got "
                              f"{len(self.pdu_power_w)}")


@dataclass
class LevelAggregate(Record):
    """Load of one level (rack, PDU, RPP, UPS, utility, row, hall, zone, site) over one window."""

    SCHEMA: ClassVar[str] = "level.aggregate"
    KINDS: ClassVar[dict[str, str]] = {
        "site": "str", "level": "str", "kind": "str", "ts_s": "float", "window_s": "float",
        "power_w": "float", "limit_w": "float", "rated_w": "float", "mode": "str",
        "gpus_expected": "int", "gpus_reporting": "int", "inlet_c": "float?", "metered_w": "float?",
        "gap_w": "float?", "racks_stale": "int?", "age_s": "float?", "gpu_temp_max_c": "float?",
        "gpus_throttled": "int?", "lag_s": "float?", "feed_signal": "str?",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"ts_s": TS_RANGE, "window_s": (0.0, 1e6)}
    site: str
    level: str
    kind: str
    ts_s: float  # end of the window, event time
    window_s: float
    power_w: float
    limit_w: float  # derated limit in the current feed mode (zones: cooling capacity)
    rated_w: float
    mode: str
    gpus_expected: int
    gpus_reporting: int
    inlet_c: float | None = None  # hottest inlet reading (racks, rows, halls, zones)
    metered_w: float | None = None  # the level's own meter, where it has one (PDUs)
    gap_w: float | None = None  # meter minus the sum of its children: a bad meter or unmonitored load
    racks_stale: int | None = None  # racks below this level whose window had no fresh frame
    age_s: float | None = None  # age of the oldest reading used (0 when every rack reported in the window)
    gpu_temp_max_c: float | None = None
    gpus_throttled: int | None = None  # GPUs reporting a thermal or power slowdown reason
    # Upper levels: wall clock minus the window's end when the worker closed it. Large: the worker is behind
    # (backlog, outage) and this record is old news; a silent rack shows in racks_stale / age_s instead.
    lag_s: float | None = None
    # "unconfirmed": the level is dark (mode, limit) because a UPS said its lineup is on battery and the PDU
    # meters have not shown it yet (streams.feed_signals, docs/safety.md). None: the meters' own state.
    feed_signal: str | None = None

    @classmethod
    def key_field(cls) -> str:
        return "level"

    def key(self) -> bytes:
        return self.level.encode()


@dataclass
class RackSummary(Record):
    """What one telemetry frame says about its rack, for the site-wide roll-up (pp.racks, keyed by site).

    The per-rack stage reduces a frame of ~72 GPUs to this; the site stage windows these by event time
    and rolls them up the power and cooling trees."""

    SCHEMA: ClassVar[str] = "rack.summary"
    KINDS: ClassVar[dict[str, str]] = {
        "site": "str", "rack": "str", "ts_s": "float", "interval_s": "float", "seq": "int",
        "power_w": "float", "pdu_power_w": "f64list", "mode": "str", "gpus_expected": "int",
        "gpus_reporting": "int", "gpus_throttled": "int", "inlet_c": "float?", "gpu_temp_max_c": "float?",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"ts_s": TS_RANGE, "seq": SEQ_RANGE}
    site: str
    rack: str
    ts_s: float
    interval_s: float
    seq: int
    power_w: float  # rack wall power computed from its GPUs (missing GPUs at their limit)
    pdu_power_w: list[float]  # PDU meters, feed A and B; NaN = no meter
    mode: str  # feed state seen from the meters
    gpus_expected: int
    gpus_reporting: int
    gpus_throttled: int  # GPUs in thermal slowdown
    inlet_c: float | None = None  # hottest inlet
    gpu_temp_max_c: float | None = None

    @classmethod
    def key_field(cls) -> str:
        return "rack"

    def key(self) -> bytes:
        return self.site.encode()  # one partition per site: the whole tree is rolled up in one place


@dataclass
class RackSummaryBatch(Record):
    """Many RackSummary rows of one site in columns: what the per-rack stage sends to pp.racks, one record per
    batch of frames instead of one per frame (per-record overhead dominated the worker's CPU)."""

    SCHEMA: ClassVar[str] = "rack.summaries"
    KINDS: ClassVar[dict[str, str]] = {
        "site": "str", "racks": "strlist", "ts_s": "f64[]", "power_w": "f64[]", "pdu_a_w": "f64[]",
        "pdu_b_w": "f64[]", "gpus_expected": "u32[]", "gpus_reporting": "u32[]", "gpus_throttled": "u32[]",
        "inlet_c": "f64[]", "gpu_temp_max_c": "f64[]",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"ts_s": TS_RANGE}
    FINITE: ClassVar[frozenset[str]] = frozenset({"ts_s", "power_w"})
    site: str
    racks: list[str]
    ts_s: F64
    power_w: F64
    pdu_a_w: F64  # NaN = no meter
    pdu_b_w: F64
    gpus_expected: U32
    gpus_reporting: U32
    gpus_throttled: U32
    inlet_c: F64  # NaN = no inlet reading
    gpu_temp_max_c: F64

    @classmethod
    def key_field(cls) -> str:
        return "site"

    def key(self) -> bytes:
        return self.site.encode()

    def validate(self, where: str) -> None:
        n = len(self.racks)
        for name in ("ts_s", "power_w", "pdu_a_w", "pdu_b_w", "gpus_expected", "gpus_reporting", "gpus_throttled",
                     "inlet_c", "gpu_temp_max_c"):
            if getattr(self, name).size != n:
                raise SchemaError(f"{where}: field '{name}' has {getattr(self, name).size} entries, racks has {n}")

    @classmethod
    def of(cls, rows: list[RackSummary]) -> RackSummaryBatch:
        def col(f: str, dtype: Any = np.float64) -> Any:
            return np.array([getattr(r, f) for r in rows], dtype=dtype)

        def opt(f: str) -> F64:
            return np.array([np.nan if getattr(r, f) is None else getattr(r, f) for r in rows], dtype=np.float64)

        return cls(site=rows[0].site if rows else "", racks=[r.rack for r in rows], ts_s=col("ts_s"),
                   power_w=col("power_w"), pdu_a_w=np.array([r.pdu_power_w[0] for r in rows], dtype=np.float64),
                   pdu_b_w=np.array([r.pdu_power_w[1] for r in rows], dtype=np.float64),
                   gpus_expected=col("gpus_expected", np.uint32), gpus_reporting=col("gpus_reporting", np.uint32),
                   gpus_throttled=col("gpus_throttled", np.uint32), inlet_c=opt("inlet_c"),
                   gpu_temp_max_c=opt("gpu_temp_max_c"))


@dataclass
class Headroom(Record):
    """Power headroom of one level (derated limit in the current feed state minus the p99 forecast)
    and, for racks and zones, thermal headroom (allowable inlet minus the forecast inlet)."""

    SCHEMA: ClassVar[str] = "level.headroom"
    KINDS: ClassVar[dict[str, str]] = {
        "site": "str", "level": "str", "kind": "str", "ts_s": "float", "mode": "str", "horizon_s": "float",
        "power_w": "float", "limit_w": "float", "forecast_p50_w": "float", "forecast_p99_w": "float",
        "headroom_w": "float", "plan_horizon_s": "float?", "plan_p99_w": "float?",
        "inlet_c": "float?", "inlet_limit_c": "float?", "forecast_inlet_c": "float?",
        "thermal_headroom_c": "float?", "time_to_limit_s": "float?", "lag_s": "float?", "feed_signal": "str?",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"ts_s": TS_RANGE}
    site: str
    level: str
    kind: str
    ts_s: float
    mode: str  # feed state the limit is taken in
    horizon_s: float  # horizon of the forecast the headroom is computed from
    power_w: float  # load now
    limit_w: float
    forecast_p50_w: float
    forecast_p99_w: float
    headroom_w: float  # limit_w - forecast_p99_w; negative means act now
    plan_horizon_s: float | None = None  # the longer (planning) horizon
    plan_p99_w: float | None = None
    inlet_c: float | None = None
    inlet_limit_c: float | None = None
    forecast_inlet_c: float | None = None
    thermal_headroom_c: float | None = None  # inlet_limit_c - forecast_inlet_c
    time_to_limit_s: float | None = None  # at the current inlet slope; None when flat or falling
    lag_s: float | None = None  # wall clock minus ts_s when the worker closed the window (see LevelAggregate)
    feed_signal: str | None = None  # "unconfirmed": dark by a UPS signal only (see LevelAggregate)

    @classmethod
    def key_field(cls) -> str:
        return "level"

    def key(self) -> bytes:
        return self.level.encode()


@dataclass
class Event(Record):
    SCHEMA: ClassVar[str] = "event"
    KINDS: ClassVar[dict[str, str]] = {
        "id": "str", "site": "str", "kind": "str", "severity": "str", "state": "str", "levels": "strlist",
        "ts_s": "float", "deadline_s": "float?", "summary": "str", "opened_s": "float?", "details": "map?",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"ts_s": TS_RANGE, "opened_s": TS_RANGE}
    SEVERITIES: ClassVar[tuple[str, ...]] = ("info", "warning", "critical")
    id: str  # one occurrence: the same id on its open, its updates and its resolution
    site: str
    # feed_loss, ups_loss, breaker_overload, cooling_failure, thermal_slowdown, telemetry_loss, meter_gap,
    # command_refused, faulty_signal (a UPS signal the meters refuted), sensor_disagreement,
    # grid_ramp, grid_range, grid_oscillation (the utility's limits, streams/grid_watch.py)
    kind: str
    severity: str
    state: str  # open | resolved
    levels: list[str]  # affected levels, the primary one first
    ts_s: float  # event time of this record
    deadline_s: float | None  # event time by which to act (e.g. estimated breaker trip); None: no deadline
    summary: str  # one line for a human: what happened, where, how bad
    opened_s: float | None = None  # event time the occurrence was first detected
    details: dict[str, Any] | None = None  # numbers behind the summary (load_frac, time_to_trip_s, ...)

    def validate(self, where: str) -> None:
        if self.severity not in self.SEVERITIES:
            raise SchemaError(f"{where}: field 'severity' = {self.severity!r}, expected one of {self.SEVERITIES}")
        if self.state not in ("open", "resolved"):
            raise SchemaError(f"{where}: field 'state' = {self.state!r}, expected open or resolved")


OUTPUT_SOURCES = ("normal", "battery", "bypass", "booster", "reducer", "none", "other")
FACILITY_KINDS = ("ups", "ats", "env")
FACILITY_VIA = ("poll", "trap")


@dataclass
class FacilityReading(Record):
    """One facility device, one poll: a UPS of a lineup (input, output, battery, alarms), a rack transfer
    switch (its two input lines), or an environment sensor (inlet air per rack, independent of the servers).

    Lists are per input or output line (phase) in line order, NaN = no reading; a missing scalar is None."""

    SCHEMA: ClassVar[str] = "facility.reading"
    KINDS: ClassVar[dict[str, str]] = {
        "site": "str", "unit": "str", "kind": "str", "ts_s": "float", "interval_s": "float", "seq": "int",
        "source": "str", "lineup": "str?", "feed": "str?", "rack": "str?",
        "input_voltage_v": "f64list?", "input_frequency_hz": "f64list?", "output_load_pct": "f64list?",
        "output_power_w": "f64list?", "output_source": "str?", "on_battery": "bool?", "on_bypass": "bool?",
        "battery_remaining_s": "float?", "battery_charge_pct": "float?", "alarms": "int?", "alarm_kinds": "strlist?",
        "racks": "strlist?", "inlet_c": "f64list?", "via": "str?", "trap": "str?", "cleared_kinds": "strlist?",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "ts_s": TS_RANGE, "interval_s": (1e-3, 3600.0), "seq": SEQ_RANGE, "alarms": (0.0, 1e6),
        "battery_remaining_s": (0.0, 1e9), "battery_charge_pct": (0.0, 100.0),
    }
    site: str
    unit: str  # the record key: the UPS lineup (level id), the transfer switch's rack, or the sensor source's name
    kind: str  # ups | ats | env
    ts_s: float  # when the answer arrived, seconds since the epoch
    interval_s: float
    seq: int  # per source, so gaps and duplicates are visible downstream
    source: str
    lineup: str | None = None  # ups: the site model's UPS lineup (level id)
    feed: str | None = None  # ups: "A" or "B", the lineup's feed
    rack: str | None = None  # ats: the rack it feeds
    input_voltage_v: list[float] | None = None  # per input phase (ats: per input line, line 1 = primary)
    input_frequency_hz: list[float] | None = None
    output_load_pct: list[float] | None = None  # per output phase, or one value for the whole unit
    output_power_w: list[float] | None = None  # per output phase
    output_source: str | None = None  # OUTPUT_SOURCES: what carries the load now
    on_battery: bool | None = None
    on_bypass: bool | None = None
    battery_remaining_s: float | None = None
    battery_charge_pct: float | None = None
    alarms: int | None = None  # alarms present on the device
    alarm_kinds: list[str] | None = None  # the well-known kinds among them (README of collectors/snmp)
    racks: list[str] | None = None  # env: the rack of each inlet_c entry
    inlet_c: list[float] | None = None
    # How the state was learnt: "poll" (a read of the device) or "trap" (a notification it pushed; then only
    # what the trap states is set: on_battery / on_bypass, the alarm kinds it raises, those it clears). None:
    # a poll, from a writer older than the field.
    via: str | None = None
    trap: str | None = None  # via "trap": the notification's MIB name, e.g. "upsTrapOnBattery"
    cleared_kinds: list[str] | None = None  # via "trap": the alarm kinds the trap says have cleared

    @classmethod
    def key_field(cls) -> str:
        return "unit"

    def key(self) -> bytes:
        return self.unit.encode()

    def validate(self, where: str) -> None:
        if self.kind not in FACILITY_KINDS:
            raise SchemaError(f"{where}: field 'kind' = {self.kind!r}, expected one of {FACILITY_KINDS}")
        if self.output_source is not None and self.output_source not in OUTPUT_SOURCES:
            raise SchemaError(f"{where}: field 'output_source' = {self.output_source!r}, expected one of "
                              f"{OUTPUT_SOURCES}")
        if self.via is not None and self.via not in FACILITY_VIA:
            raise SchemaError(f"{where}: field 'via' = {self.via!r}, expected one of {FACILITY_VIA}")
        if self.feed is not None and self.feed not in ("A", "B"):
            raise SchemaError(f"{where}: field 'feed' = {self.feed!r}, expected 'A' or 'B'")
        if (self.racks is None) != (self.inlet_c is None) or (
                self.racks is not None and self.inlet_c is not None and len(self.racks) != len(self.inlet_c)):
            raise SchemaError(f"{where}: fields 'racks' and 'inlet_c' must come together, same length")


ACTIONS = ("power_cap", "sm_clock_lock", "power_floor", "reconfigure", "routing_weight", "release")


def unsigned_wire_bytes(rec: Record) -> bytes:
    """What a signed record's signature covers: its wire form without `sig` (commands, grid requests, job
    notices)."""
    d = rec.to_wire()
    d.pop("sig")
    return bytes(msgpack.packb(d, use_bin_type=True))


@dataclass
class Command(Record):
    """A signed, leased instruction to one rack's actuator, for some of its GPUs."""

    SCHEMA: ClassVar[str] = "command"
    KINDS: ClassVar[dict[str, str]] = {
        "id": "str", "site": "str", "target": "str", "action": "str", "gpus": "u16[]", "values": "f32[]",
        "params": "map", "reason": "str", "issuer": "str", "issued_at_s": "float", "lease_s": "float",
        "key_id": "str", "sig": "str", "shadow": "bool?",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"values": (0.0, 1e5), "lease_s": (0.1, 86400.0),
                                                        "issued_at_s": TS_RANGE}
    id: str
    site: str
    target: str  # rack id
    action: str
    gpus: U16  # flat GPU index within the rack
    # one per GPU: limit_w for power_cap, MHz for sm_clock_lock, floor W (DC, per GPU) for power_floor, weight for
    # routing; a release names its knob in params ("power", "clock" or "floor")
    values: F32
    params: dict[str, Any]
    reason: str
    issuer: str
    issued_at_s: float
    lease_s: float  # the actuator reverts to its safe value if not renewed within this
    key_id: str = ""
    sig: str = ""
    # True: what a controller in shadow mode would have done (pp.shadow), never to be applied; actuators refuse
    # it wherever it turns up. Signed with the rest. Absent on the wire for a live command (None), so live
    # commands and their signatures are as before.
    shadow: bool | None = None

    def key(self) -> bytes:
        return self.target.encode()

    def validate(self, where: str) -> None:
        if self.action not in ACTIONS:
            raise SchemaError(f"{where}: field 'action' = {self.action!r}, expected one of {ACTIONS}")
        if self.gpus.size != self.values.size:
            raise SchemaError(f"{where}: {self.gpus.size} gpus but {self.values.size} values")

    def signing_bytes(self) -> bytes:
        return unsigned_wire_bytes(self)

    def expires_at_s(self) -> float:
        return self.issued_at_s + self.lease_s


ACK_STATUSES = ("applied", "clamped", "duplicate", "rejected", "expired", "reverted")


@dataclass
class Ack(Record):
    SCHEMA: ClassVar[str] = "ack"
    KINDS: ClassVar[dict[str, str]] = {
        "command_id": "str", "site": "str", "target": "str", "status": "str", "gpus": "u16[]",
        "applied": "f32[]", "reason": "str", "actuator": "str", "ts_s": "float", "key_id": "str?", "sig": "str?",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"ts_s": TS_RANGE}
    command_id: str
    site: str
    target: str
    status: str
    gpus: U16
    applied: F32  # what the hardware actually took, after clamping
    reason: str
    actuator: str
    ts_s: float
    # Signed by the actuator with its ack key (powerplane.signing), so a reader can tell an actuator's word
    # from anyone's. Optional on the wire so an unsigned ack still decodes and is refused as unsigned.
    key_id: str = ""
    sig: str = ""

    @classmethod
    def key_field(cls) -> str:
        return "command_id"

    def key(self) -> bytes:
        return self.target.encode()

    def validate(self, where: str) -> None:
        if self.status not in ACK_STATUSES:
            raise SchemaError(f"{where}: field 'status' = {self.status!r}, expected one of {ACK_STATUSES}")
        self.key_id = self.key_id or ""  # absent on the wire: unsigned, refused by the verifier
        self.sig = self.sig or ""

    def signing_bytes(self) -> bytes:
        d = self.to_wire()
        d.pop("sig", None)
        d["key_id"] = self.key_id
        return bytes(msgpack.packb(d, use_bin_type=True))


@dataclass
class GridRequest(Record):
    """A demand-response request from the utility's side (pp.grid, issue 16): reduce the site, or one utility feed,
    to `reduce_to_mw` or by `reduce_by_pct` of its load at `start_s`, within `within_s`, and hold it `hold_s`.
    Signed by the grid role's key (powerplane.signing); checked against the site and the clock on arrival
    (powerplane.grid_input). The wire form of powerplane.grid.DemandResponse, with who sent it and when."""

    SCHEMA: ClassVar[str] = "grid.request"
    KINDS: ClassVar[dict[str, str]] = {
        "id": "str", "site": "str", "issuer": "str", "issued_at_s": "float", "start_s": "float",
        "reduce_by_pct": "float?", "reduce_to_mw": "float?", "within_s": "float", "hold_s": "float", "feed": "str?",
        "key_id": "str", "sig": "str",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "issued_at_s": TS_RANGE, "start_s": TS_RANGE, "within_s": (1.0, 86_400.0), "hold_s": (1.0, 7 * 86_400.0)}
    id: str  # the utility's event id: one request, however often it is delivered
    site: str
    issuer: str  # who sent it: the gateway (an OpenADR VEN) and the operator or program behind it
    issued_at_s: float  # seconds since the epoch, the issuer's clock
    start_s: float  # seconds since the epoch: when the reduction starts
    reduce_by_pct: float | None  # of the load at start_s; exactly one of this and reduce_to_mw
    reduce_to_mw: float | None
    within_s: float  # reach the target this long after start_s
    hold_s: float  # then hold it this long; restored no faster than the ramp-up limit
    feed: str | None = None  # a utility feed (level id); None: the whole site
    key_id: str = ""
    sig: str = ""

    def key(self) -> bytes:
        return self.site.encode()

    def validate(self, where: str) -> None:
        if not self.id or not self.site or not self.issuer:
            raise SchemaError(f"{where}: fields 'id', 'site' and 'issuer' must not be empty")
        if (self.reduce_by_pct is None) == (self.reduce_to_mw is None):
            raise SchemaError(f"{where}: give exactly one of 'reduce_by_pct' and 'reduce_to_mw'")
        if self.reduce_by_pct is not None and not 0.0 < self.reduce_by_pct < 100.0:
            raise SchemaError(f"{where}: field 'reduce_by_pct' = {self.reduce_by_pct:g}: a site can shed more than "
                              f"0 % and less than 100 % of its load (its GPUs cannot be capped to nothing)")
        if self.reduce_to_mw is not None and not self.reduce_to_mw > 0.0:
            raise SchemaError(f"{where}: field 'reduce_to_mw' = {self.reduce_to_mw:g}: a target must be above 0 MW")

    def signing_bytes(self) -> bytes:
        return unsigned_wire_bytes(self)

    def end_s(self) -> float:
        """When the hold ends (the restore starts), seconds since the epoch."""
        return self.start_s + self.within_s + self.hold_s


@dataclass
class GridCancel(Record):
    """The utility calls a demand-response request off (pp.grid, beside the requests): the controller drops it if
    it has not started, else restores from where its budget is now at the ramp-up limit (controllers.grid_limits).
    Signed by the grid role's key like the request; `id` is the cancel's own, `request_id` the request's."""

    SCHEMA: ClassVar[str] = "grid.cancel"
    KINDS: ClassVar[dict[str, str]] = {
        "id": "str", "site": "str", "issuer": "str", "issued_at_s": "float", "request_id": "str", "key_id": "str",
        "sig": "str",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"issued_at_s": TS_RANGE}
    id: str
    site: str
    issuer: str
    issued_at_s: float
    request_id: str
    key_id: str = ""
    sig: str = ""

    @classmethod
    def of(cls, request_id: str, site: str, issuer: str, issued_at_s: float) -> GridCancel:
        """The cancel of `request_id` (unsigned), under the id `<request id>#cancel` the CLI and the gateway use."""
        return cls(id=f"{request_id}#cancel", site=site, issuer=issuer, issued_at_s=issued_at_s,
                   request_id=request_id)

    def key(self) -> bytes:
        return self.site.encode()

    def validate(self, where: str) -> None:
        if not self.id or not self.site or not self.issuer or not self.request_id:
            raise SchemaError(f"{where}: fields 'id', 'site', 'issuer' and 'request_id' must not be empty")

    def signing_bytes(self) -> bytes:
        return unsigned_wire_bytes(self)


@dataclass
class JobNotice(Record):
    """A scheduler's word that a job starts on some GPUs at `start_s` (pp.jobs, issue 16): the controller's ramp
    limiter then takes those GPUs from idle up to the power they will compute at before the start
    (controllers.grid_limits GridControl.on_job_notice), so a synchronous job's start is not one step of its whole
    power. Sent by the scheduler's prolog, signed by the scheduler role's key (powerplane.signing); checked on
    arrival (powerplane.job_input). `gpus` names them as a scheduler knows them: a server (host) for every GPU of it,
    or `<server>/gpu<N>` for its GPU N (the scheduler's index on that host; the site's own name: Site.gpu_id)."""

    SCHEMA: ClassVar[str] = "job.notice"
    KINDS: ClassVar[dict[str, str]] = {
        "id": "str", "site": "str", "issuer": "str", "issued_at_s": "float", "start_s": "float", "gpus": "strlist",
        "expected_w": "float?", "key_id": "str", "sig": "str",
    }
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "issued_at_s": TS_RANGE, "start_s": TS_RANGE, "expected_w": (1.0, 1e5)}
    id: str  # the scheduler's job id (with its restart count: a requeued job is a new start)
    site: str
    issuer: str  # who announces it: the scheduler's prolog and the host it runs on
    issued_at_s: float  # seconds since the epoch, the issuer's clock
    start_s: float  # seconds since the epoch: when the job starts computing
    gpus: list[str]  # servers, or `<server>/gpu<N>`
    expected_w: float | None = None  # DC W per GPU it will compute at; None: each GPU's maximum power limit
    key_id: str = ""
    sig: str = ""

    def key(self) -> bytes:
        return self.site.encode()

    def validate(self, where: str) -> None:
        if not self.id or not self.site or not self.issuer:
            raise SchemaError(f"{where}: fields 'id', 'site' and 'issuer' must not be empty")
        if not self.gpus or not all(self.gpus):
            raise SchemaError(f"{where}: field 'gpus' must name at least one server or GPU, and no empty name")

    def signing_bytes(self) -> bytes:
        return unsigned_wire_bytes(self)


@dataclass
class DeadLetter:
    """Not a Record: the original bytes must survive even when they are not MessagePack at all."""

    source_topic: str
    partition: int
    offset: int
    reason: str
    key: bytes | None
    value: bytes
    extra: dict[str, str] = field(default_factory=dict)

    def headers(self) -> list[tuple[str, bytes]]:
        h = [("pp.reason", self.reason.encode()), ("pp.source_topic", self.source_topic.encode()),
             ("pp.source_partition", str(self.partition).encode()), ("pp.source_offset", str(self.offset).encode())]
        if self.key is not None:
            h.append(("pp.source_key", self.key))  # the record key is replaced by the topic name; keep it
        h.extend((f"pp.{k}", v.encode()) for k, v in self.extra.items())
        return h


RECORDS: dict[str, type[Record]] = {
    r.SCHEMA: r for r in (TelemetryFrame, RackSummary, RackSummaryBatch, LevelAggregate, Headroom, Event, Command, Ack,
                           FacilityReading, GridRequest, GridCancel, JobNotice)
}


def decode_any(data: bytes) -> Record:
    """Decode a record of any known schema (tools such as record/replay and the dashboard)."""
    try:
        d = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise SchemaError(f"not a MessagePack record ({type(e).__name__}: {e})") from None
    name = d.get("schema") if isinstance(d, dict) else None
    if name not in RECORDS:
        raise SchemaError(f"unknown schema {name!r}")
    return RECORDS[name].from_wire(d)


def as_plain(rec: Record) -> dict[str, Any]:
    """A JSON-friendly view (arrays as lists) for logs and the CLI."""
    out = asdict(rec)
    for k, v in out.items():
        if isinstance(v, np.ndarray):
            out[k] = v.tolist()
    return out
