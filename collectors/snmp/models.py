"""Pure tables and functions of the SNMP collector: OIDs, scales, model detection, poll plans, conversion.

Nothing here does I/O, so all of it is unit-tested without an agent (tests/unit/test_collector_snmp.py).
The flow (source.py drives it):

1. `detect_model`: which MIB family a device speaks, from one GETNEXT into each family's subtree
   (`PROBES`), with sysObjectID for the error message only (an Eaton 9PX answers XUPS-MIB under MGE's
   sysObjectID, so the tables decide, not the vendor number).
2. `walk_columns(model)`: the table columns to walk once at discovery.
3. `make_plan(model, walked, ...)`: from the walked rows, the exact instance OIDs to GET on every poll
   (`Plan.points`), each with its scale and its slot in the frame (power, phase k, bank k, outlet k,
   sensor k). Rows a device lists without a reading become fixed NaN slots, not OIDs to poll.
4. `convert(plan, answers)`: the GET answers -> SI values (`Reading`), with every bad value recorded as a
   `Problem` (the reading is then NaN, never 0).

Scales are kept as integer ratios (`mul`/`div`) so that tenths are divided by 10, not multiplied by
0.1: a reading equals `raw * mul / div` exactly as float64 would compute it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

OID = tuple[int, ...]


def oid(text: str) -> OID:
    """'1.3.6.1' (leading dot allowed) -> (1, 3, 6, 1)."""
    return tuple(int(p) for p in text.strip().lstrip(".").split("."))


def oid_str(o: OID) -> str:
    return ".".join(str(p) for p in o)


class Absent(enum.Enum):
    """An SNMPv2 exception value, or SNMPv1 noSuchName mapped onto one."""

    NO_SUCH_OBJECT = "noSuchObject"
    NO_SUCH_INSTANCE = "noSuchInstance"
    END_OF_MIB = "endOfMibView"


@dataclass(frozen=True)
class Junk:
    """A value of a type we cannot read as a number (OctetString, IpAddress, TimeTicks...)."""

    type_name: str
    text: str  # short, printable, one line


# What one varbind value can be once taken out of pysnmp: an integer (Integer32, Gauge32, Counter...),
# an OBJECT IDENTIFIER, an exception value, or junk.
Raw = int | OID | Absent | Junk


# ---------------------------------------------------------------------------------------------------
# Columns (MIB objects) and their scales
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Col:
    name: str  # MIB object name
    oid: OID  # the column (or the scalar object, without the .0 instance)
    unit: str = ""  # what the raw integer counts, as the MIB says
    mul: int = 1  # SI value = raw * mul / div
    div: int = 1
    na: frozenset[int] = frozenset()  # raw values the MIB defines as "no reading"


_APC = "1.3.6.1.4.1.318.1.1"
_NA = frozenset({-1})

# PowerNet-MIB, rPDU2 (current rack PDU generation: AP7900B/AP8xxx, NMC rPDU2 firmware)
RPDU2_DEV_MODULE = Col("rPDU2DeviceStatusModule", oid(f"{_APC}.26.4.3.1.2"))
RPDU2_DEV_POWER = Col("rPDU2DeviceStatusPower", oid(f"{_APC}.26.4.3.1.5"), "0.01 kW", 10, 1, _NA)
RPDU2_PHASE_MODULE = Col("rPDU2PhaseStatusModule", oid(f"{_APC}.26.6.3.1.2"))
RPDU2_PHASE_NUMBER = Col("rPDU2PhaseStatusNumber", oid(f"{_APC}.26.6.3.1.3"))
RPDU2_PHASE_CURRENT = Col("rPDU2PhaseStatusCurrent", oid(f"{_APC}.26.6.3.1.5"), "0.1 A", 1, 10, _NA)
RPDU2_BANK_MODULE = Col("rPDU2BankStatusModule", oid(f"{_APC}.26.8.3.1.2"))
RPDU2_BANK_NUMBER = Col("rPDU2BankStatusNumber", oid(f"{_APC}.26.8.3.1.3"))
RPDU2_BANK_CURRENT = Col("rPDU2BankStatusCurrent", oid(f"{_APC}.26.8.3.1.5"), "0.1 A", 1, 10, _NA)
RPDU2_OUTLET_MODULE = Col("rPDU2OutletMeteredStatusModule", oid(f"{_APC}.26.9.4.3.1.2"))
RPDU2_OUTLET_NUMBER = Col("rPDU2OutletMeteredStatusNumber", oid(f"{_APC}.26.9.4.3.1.4"))
RPDU2_OUTLET_POWER = Col("rPDU2OutletMeteredStatusPower", oid(f"{_APC}.26.9.4.3.1.7"), "W", 1, 1, _NA)
RPDU2_SENSOR_MODULE = Col("rPDU2SensorTempHumidityStatusModule", oid(f"{_APC}.26.10.2.2.1.2"))
RPDU2_SENSOR_TEMP = Col("rPDU2SensorTempHumidityStatusTempC", oid(f"{_APC}.26.10.2.2.1.8"), "0.1 C", 1, 10, _NA)
# PowerNet-MIB, rPDU (the older rack PDU tables; rPDU2 firmware still serves them)
RPDU_POWER = Col("rPDUIdentDevicePowerWatts", oid(f"{_APC}.12.1.16"), "W", 1, 1, _NA)
RPDU_LOAD = Col("rPDULoadStatusLoad", oid(f"{_APC}.12.2.3.1.1.2"), "0.1 A", 1, 10, _NA)
RPDU_LOAD_PHASE = Col("rPDULoadStatusPhaseNumber", oid(f"{_APC}.12.2.3.1.1.4"))
RPDU_LOAD_BANK = Col("rPDULoadStatusBankNumber", oid(f"{_APC}.12.2.3.1.1.5"))
# PowerNet-MIB, universal I/O sensor ports of the network management card (index port.sensor)
UIO_TEMP = Col("uioSensorStatusTemperatureDegC", oid(f"{_APC}.25.1.2.1.6"), "C", 1, 1, _NA)

# XUPS-MIB (Eaton/Powerware UPS, also served by Eaton 9PX/93E network cards)
XUPS_OUT_CURRENT = Col("xupsOutputCurrent", oid("1.3.6.1.4.1.534.1.4.4.1.3"), "A", 1, 1)
XUPS_OUT_WATTS = Col("xupsOutputWatts", oid("1.3.6.1.4.1.534.1.4.4.1.4"), "W", 1, 1)
XUPS_OUT_CURRENT_HP = Col("xupsOutputCurrentHighPrecision", oid("1.3.6.1.4.1.534.1.4.4.1.7"), "0.1 A", 1, 10)
XUPS_AMBIENT = Col("xupsEnvAmbientTemp", oid("1.3.6.1.4.1.534.1.6.1"), "C", 1, 1)

# LIEBERT-GP-ENVIRONMENTAL-MIB (Vertiv/Liebert cooling units with an IntelliSlot card)
LGP_TEMP_DESCR = Col("lgpEnvTemperatureDescrDegC", oid("1.3.6.1.4.1.476.1.42.3.4.1.3.3.1.2"))
LGP_TEMP = Col("lgpEnvTemperatureMeasurementDegC", oid("1.3.6.1.4.1.476.1.42.3.4.1.3.3.1.3"), "C", 1, 1)
_LGP_WELL_KNOWN = "1.3.6.1.4.1.476.1.42.3.4.1.1"  # lgpEnvTemperatureWellKnown

# The `temp_points` names of the vertiv model -> the well-known temperature OIDs a row's
# lgpEnvTemperatureDescrDegC may point to (a row matches an OID or anything below it).
VERTIV_POINTS: dict[str, tuple[OID, ...]] = {
    "control": (oid(f"{_LGP_WELL_KNOWN}.1"),),  # lgpEnvControlTemperature
    "return": (oid(f"{_LGP_WELL_KNOWN}.2"),),  # lgpEnvReturnAirTemperature
    "supply": (oid(f"{_LGP_WELL_KNOWN}.3"),),  # lgpEnvSupplyAirTemperature
    "ambient": (oid(f"{_LGP_WELL_KNOWN}.4"),),  # lgpAmbientTemperature
    "local": (oid(f"{_LGP_WELL_KNOWN}.10"),),  # lgpLocalTemperature (sensors 1..3 below it)
    "enclosure": (oid(f"{_LGP_WELL_KNOWN}.14"),),  # lgpEnvEnclosureTemperatureSensors
    "room": (oid(f"{_LGP_WELL_KNOWN}.15"),),  # lgpEnvValueAmbientRoomTemperature
    "external": (oid(f"{_LGP_WELL_KNOWN}.19.1"), oid(f"{_LGP_WELL_KNOWN}.19.3")),  # external air sensors A, B
}
# Air that enters the racks; return air and the control point are the hot side or a set point.
VERTIV_DEFAULT_POINTS = ("supply", "ambient", "local", "enclosure", "room", "external")

SYS_OBJECT_ID = oid("1.3.6.1.2.1.1.2")  # sysObjectID (GETNEXT of it answers sysObjectID.0)

MODELS = ("apc-rpdu2", "apc-rpdu", "eaton", "vertiv")

@dataclass(frozen=True)
class Probe:
    name: str
    oid: OID  # a subtree: the family answers when GETNEXT of this OID lands inside it


# One GETNEXT on each family's subtree tells which answers; in this order of preference. rPDU2 is probed
# as a whole (not just its device table) so that a partial rPDU2 agent is still read as rPDU2.
PROBES: dict[str, Probe] = {
    "apc-rpdu2": Probe("PowerNet-MIB rPDU2", oid(f"{_APC}.26")),
    "apc-rpdu": Probe("PowerNet-MIB rPDU", oid(f"{_APC}.12")),
    "eaton": Probe("XUPS-MIB xupsOutputTable", oid("1.3.6.1.4.1.534.1.4.4")),
    "vertiv": Probe("LIEBERT-GP-ENVIRONMENTAL-MIB lgpEnvTemperatureTableDegC", oid("1.3.6.1.4.1.476.1.42.3.4.1.3.3")),
}

_WALKS: dict[str, tuple[Col, ...]] = {
    "apc-rpdu2": (RPDU2_DEV_MODULE, RPDU2_DEV_POWER, RPDU_POWER,
                  RPDU2_PHASE_MODULE, RPDU2_PHASE_NUMBER, RPDU2_PHASE_CURRENT,
                  RPDU2_BANK_MODULE, RPDU2_BANK_NUMBER, RPDU2_BANK_CURRENT,
                  RPDU2_OUTLET_MODULE, RPDU2_OUTLET_NUMBER, RPDU2_OUTLET_POWER,
                  RPDU2_SENSOR_MODULE, RPDU2_SENSOR_TEMP, UIO_TEMP),
    "apc-rpdu": (RPDU_POWER, RPDU_LOAD, RPDU_LOAD_PHASE, RPDU_LOAD_BANK, UIO_TEMP),
    "eaton": (XUPS_OUT_WATTS, XUPS_OUT_CURRENT, XUPS_OUT_CURRENT_HP, XUPS_AMBIENT),
    "vertiv": (LGP_TEMP_DESCR, LGP_TEMP),
}

# Valid SI ranges per slot kind; a value outside is reported as a problem and becomes NaN.
RANGES: dict[str, tuple[float, float]] = {
    "power": (0.0, 1e7), "phase": (0.0, 10000.0), "bank": (0.0, 10000.0), "outlet": (0.0, 100000.0),
    "temp": (-50.0, 150.0),
}


_OUTLET_COLS = (RPDU2_OUTLET_MODULE, RPDU2_OUTLET_NUMBER, RPDU2_OUTLET_POWER)


def walk_columns(model: str, *, outlets: bool = True) -> tuple[Col, ...]:
    return _WALKS[model] if outlets else tuple(c for c in _WALKS[model] if c not in _OUTLET_COLS)


def prefix_of(o: OID, base: OID) -> OID | None:
    """The index part of `o` below `base`, or None when `o` is not under `base`."""
    n = len(base)
    if len(o) > n and o[:n] == base:
        return o[n:]
    return None


def detect_model(probe: Mapping[str, bool]) -> str | None:
    """The first family (in PROBES order) whose subtree answered at least one instance."""
    for model in PROBES:
        if probe.get(model):
            return model
    return None


# ---------------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------------
KINDS = ("power", "power_fallback", "phase", "bank", "outlet", "temp")


@dataclass(frozen=True)
class Point:
    """One instance OID to GET on every poll, and where its value goes."""

    oid: OID
    label: str  # e.g. rPDU2DeviceStatusPower.1
    kind: str  # power (summed) | power_fallback | phase | bank | outlet | temp
    pos: int  # slot within its kind's array (0 for power)
    col: Col


@dataclass(frozen=True)
class Plan:
    model: str
    points: tuple[Point, ...]
    n_phase: int = 0
    n_bank: int = 0
    n_outlet: int = 0
    n_temp: int = 0
    notes: tuple[str, ...] = ()  # what discovery found missing (partial walk)

    def describe(self) -> str:
        return (f"model {self.model}: {sum(p.kind == 'power' for p in self.points)} power, {self.n_phase} phase, "
                f"{self.n_bank} bank, {self.n_outlet} outlet, {self.n_temp} temperature reading(s), "
                f"{len(self.points)} OIDs per poll")


Walked = Mapping[OID, Mapping[OID, Raw]]  # column OID -> {row index: value}, in walk order


def _ints(walked: Walked, col: Col) -> dict[OID, int]:
    """The rows of a selector column that hold integers."""
    return {i: v for i, v in walked.get(col.oid, {}).items() if isinstance(v, int)}


def _rows(walked: Walked, col: Col) -> dict[OID, Raw]:
    return dict(walked.get(col.oid, {}))


@dataclass
class _Builder:
    model: str
    points: list[Point] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, col: Col, index: OID | None, data: Mapping[OID, Raw]) -> None:
        """Append one slot of `kind`; poll `col.index` if the walk saw that instance, else a fixed NaN."""
        pos = self.counts[kind]
        if kind != "power" and kind != "power_fallback":
            self.counts[kind] = pos + 1
        else:
            pos = 0
        if index is None:
            return
        if index in data:
            self.points.append(Point(col.oid + index, f"{col.name}.{oid_str(index)}", kind, pos, col))
        else:
            self.notes.append(f"{col.name}.{oid_str(index)} not served (reported as NaN)")

    def plan(self) -> Plan:
        c = self.counts
        return Plan(self.model, tuple(self.points), c["phase"], c["bank"], c["outlet"], c["temp"],
                    tuple(self.notes))


def _by_module(module_col: Mapping[OID, int], rows: Sequence[OID], module: int) -> list[OID]:
    """Rows of an rPDU2 table that belong to daisy-chain unit `module` (all rows if no module column)."""
    if not module_col:
        return list(rows)
    return [r for r in rows if module_col.get(r) == module]


def _sort_by(rows: Sequence[OID], number: Mapping[OID, int]) -> list[OID]:
    return sorted(rows, key=lambda r: (number.get(r, 1 << 31), r))


def make_plan(model: str, walked: Walked, *, module: int = 1,
              temp_points: Sequence[str] = VERTIV_DEFAULT_POINTS, outlets: bool = True) -> Plan:
    """The poll plan of a device, from the rows its discovery walk returned (see README.md, "OIDs")."""
    b = _Builder(model)
    if model == "apc-rpdu2":
        dev_power = _rows(walked, RPDU2_DEV_POWER)
        dev_rows = _by_module(_ints(walked, RPDU2_DEV_MODULE), list(dev_power), module)
        if not dev_rows:
            b.notes.append(f"no {RPDU2_DEV_POWER.name} row for module {module}")
        for r in dev_rows:
            b.add("power", RPDU2_DEV_POWER, r, dev_power)
        ident = _rows(walked, RPDU_POWER)
        if module == 1 and (0,) in ident:  # the host unit's own total, used when rPDU2 says -1
            b.add("power_fallback", RPDU_POWER, (0,), ident)
        for kind, mod_col, num_col, data_col in (
                ("phase", RPDU2_PHASE_MODULE, RPDU2_PHASE_NUMBER, RPDU2_PHASE_CURRENT),
                ("bank", RPDU2_BANK_MODULE, RPDU2_BANK_NUMBER, RPDU2_BANK_CURRENT),
                ("outlet", RPDU2_OUTLET_MODULE, RPDU2_OUTLET_NUMBER, RPDU2_OUTLET_POWER)):
            if kind == "outlet" and not outlets:
                continue
            data = _rows(walked, data_col)
            modules = _ints(walked, mod_col)
            rows = _by_module(modules, list(modules) or list(data), module)
            for r in _sort_by(rows, _ints(walked, num_col)):
                b.add(kind, data_col, r, data)
        if not any(p.kind == "phase" for p in b.points):
            b.notes.append(f"no {RPDU2_PHASE_CURRENT.name} row for module {module}")
        temps = _rows(walked, RPDU2_SENSOR_TEMP)
        modules = _ints(walked, RPDU2_SENSOR_MODULE)
        for r in _by_module(modules, list(modules) or list(temps), module):
            b.add("temp", RPDU2_SENSOR_TEMP, r, temps)
        if module == 1:
            uio = _rows(walked, UIO_TEMP)
            for r in uio:
                b.add("temp", UIO_TEMP, r, uio)
    elif model == "apc-rpdu":
        ident = _rows(walked, RPDU_POWER)
        if (0,) in ident:
            b.add("power", RPDU_POWER, (0,), ident)
        else:
            b.notes.append(f"{RPDU_POWER.name}.0 not served")
        load = _rows(walked, RPDU_LOAD)
        phase_no, bank_no = _ints(walked, RPDU_LOAD_PHASE), _ints(walked, RPDU_LOAD_BANK)
        phases = [r for r in load if bank_no.get(r, 0) == 0]  # bank 0 = a phase total
        banks = [r for r in load if bank_no.get(r, 0) > 0]
        for r in _sort_by(phases, phase_no):
            b.add("phase", RPDU_LOAD, r, load)
        for r in _sort_by(banks, bank_no):
            b.add("bank", RPDU_LOAD, r, load)
        if not load:
            b.notes.append(f"no {RPDU_LOAD.name} rows")
        uio = _rows(walked, UIO_TEMP)
        for r in uio:
            b.add("temp", UIO_TEMP, r, uio)
    elif model == "eaton":
        watts, amps, amps_hp = (_rows(walked, c) for c in (XUPS_OUT_WATTS, XUPS_OUT_CURRENT, XUPS_OUT_CURRENT_HP))
        phases = sorted(set(watts) | set(amps) | set(amps_hp))
        for r in phases:
            b.add("power", XUPS_OUT_WATTS, r, watts)
            if r in amps_hp:
                b.add("phase", XUPS_OUT_CURRENT_HP, r, amps_hp)
            else:
                b.add("phase", XUPS_OUT_CURRENT, r, amps)
        if not watts:
            b.notes.append(f"no {XUPS_OUT_WATTS.name} rows")
        ambient = _rows(walked, XUPS_AMBIENT)
        if (0,) in ambient:
            b.add("temp", XUPS_AMBIENT, (0,), ambient)
    elif model == "vertiv":
        wanted = [o for name in temp_points for o in VERTIV_POINTS[name]]
        descr = _rows(walked, LGP_TEMP_DESCR)
        temps = _rows(walked, LGP_TEMP)
        for r, d in descr.items():
            if isinstance(d, tuple) and any(d[:len(w)] == w for w in wanted):
                b.add("temp", LGP_TEMP, r, temps)
        if not b.counts["temp"]:
            b.notes.append(f"no {LGP_TEMP.name} row for {', '.join(temp_points)}")
    else:
        raise ValueError(f"unknown model {model!r}")
    return b.plan()


# ---------------------------------------------------------------------------------------------------
# Conversion of one poll's answers
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    key: str  # stable identity (OID + what is wrong), so a recurring problem is logged once
    message: str  # one line


def describe(raw: Raw) -> str:
    if isinstance(raw, Junk):
        return f"{raw.type_name} {raw.text}"
    if isinstance(raw, Absent):
        return raw.value
    if isinstance(raw, tuple):
        return f"OBJECT IDENTIFIER {oid_str(raw)}"
    return str(raw)


def scaled(point: Point, raw: Raw) -> tuple[float, Problem | None]:
    """One answer -> (SI value or NaN, problem or None). The MIB's "no reading" values are NaN, no problem."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        where = _where(point)
        if isinstance(raw, Absent):
            return math.nan, Problem(f"{where}:absent", f"{where} answered {raw.value}")
        return math.nan, Problem(f"{where}:type", f"{where} is {describe(raw)}, expected an integer")
    if raw in point.col.na:
        return math.nan, None
    value = raw * point.col.mul / point.col.div if point.col.div != 1 else float(raw * point.col.mul)
    lo, hi = RANGES["power" if point.kind == "power_fallback" else point.kind]
    if not lo <= value <= hi:
        where = _where(point)
        return math.nan, Problem(f"{where}:range", f"{where} = {raw} ({value:g} SI) is outside [{lo:g}, {hi:g}]")
    return value, None


def _where(point: Point) -> str:
    """How a problem names its OID; built only when there is a problem (a poll reads every point)."""
    return f"{oid_str(point.oid)} ({point.label})"


@dataclass
class Reading:
    power_w: float
    phase_a: list[float]
    bank_a: list[float]
    outlet_w: list[float]
    inlet_c: list[float]
    problems: list[Problem]
    gone: bool = False  # a planned OID answered noSuch*: the device changed, discover again

    def usable(self) -> bool:
        vals = [self.power_w, *self.phase_a, *self.bank_a, *self.outlet_w, *self.inlet_c]
        return any(not math.isnan(v) for v in vals)


def convert(plan: Plan, answers: Mapping[OID, Raw]) -> Reading:
    """Turn one poll's answers (instance OID -> raw value) into SI readings along the plan."""
    nan = math.nan
    out: dict[str, list[float]] = {
        "phase": [nan] * plan.n_phase, "bank": [nan] * plan.n_bank, "outlet": [nan] * plan.n_outlet,
        "temp": [nan] * plan.n_temp,
    }
    problems: list[Problem] = []
    power_parts: list[float] = []
    fallback = nan
    gone = False
    for p in plan.points:
        raw = answers.get(p.oid, Absent.NO_SUCH_INSTANCE)
        value, problem = scaled(p, raw)
        if problem is not None:
            problems.append(problem)
            gone = gone or isinstance(raw, Absent)
        if p.kind == "power":
            power_parts.append(value)
        elif p.kind == "power_fallback":
            fallback = value
        else:
            out[p.kind][p.pos] = value
    # A total is only a total when every part is there; a partial sum would under-report the load.
    power = sum(power_parts) if power_parts and not any(math.isnan(v) for v in power_parts) else nan
    if math.isnan(power):
        power = fallback
    return Reading(power, out["phase"], out["bank"], out["outlet"], out["temp"], problems, gone)
