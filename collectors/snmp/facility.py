"""Facility models of the SNMP collector: UPS units, rack transfer switches and environment sensors, read as
what they are (input, output source, battery, alarms; rack inlet air), not as power meters. Pure tables and
functions like models.py (the PDU models), unit-tested without an agent; source.py drives them the same way:
`walk_columns` at discovery, `make_plan` from the walked rows, `convert` of each poll's GET answers, and,
when the device reports alarms, `alarm_kinds` of one walk of its alarm table.

Models (README.md beside this file, "Facility models", has every OID with its scale and where it was checked):
- `ups-mib`: RFC 1628 UPS-MIB (1.3.6.1.2.1.33), which most UPS network cards serve (Tripp Lite PowerAlert
  serves its UPSes' readings through it).
- `eaton-ups`: Eaton/Powerware XUPS-MIB (1.3.6.1.4.1.534.1), e.g. the 9PX recording. The `eaton` PDU-style
  meter model (models.py) stays as it was.
- `tripplite-ats`: Tripp Lite PowerAlert transfer switches, TRIPPLITE-PRODUCTS tlpAts (1.3.6.1.4.1.850.1.1.3.4)
  and the agent's alarm table (1.3.6.1.4.1.850.1.3), the PowerAlert recording.
- `geist`: Geist (Vertiv) environment monitors, GEIST-V4-MIB (1.3.6.1.4.1.21239.5.1): the internal probe and
  the external temperature probes, each mapped to a rack by the source's `probes` table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from collectors.snmp.models import OID, Absent, Col, Raw, Walked, describe, oid, oid_str, prefix_of

UPS_MODELS = ("ups-mib", "eaton-ups")
ATS_MODELS = ("tripplite-ats",)
ENV_MODELS = ("geist",)
FACILITY_MODELS = (*UPS_MODELS, *ATS_MODELS, *ENV_MODELS)


def kind_of(model: str) -> str:
    """The FacilityReading kind a model publishes."""
    return "ups" if model in UPS_MODELS else "ats" if model in ATS_MODELS else "env"


# ---- RFC 1628 UPS-MIB ------------------------------------------------------------------------------
_UPS = "1.3.6.1.2.1.33.1"
UPS_MINUTES = Col("upsEstimatedMinutesRemaining", oid(f"{_UPS}.2.3"), "minutes", 60, 1)
UPS_CHARGE = Col("upsEstimatedChargeRemaining", oid(f"{_UPS}.2.4"), "%")
UPS_IN_HZ = Col("upsInputFrequency", oid(f"{_UPS}.3.3.1.2"), "0.1 Hz", 1, 10)
UPS_IN_V = Col("upsInputVoltage", oid(f"{_UPS}.3.3.1.3"), "V")
UPS_OUT_SOURCE = Col("upsOutputSource", oid(f"{_UPS}.4.1"))
UPS_OUT_W = Col("upsOutputPower", oid(f"{_UPS}.4.4.1.4"), "W")
UPS_OUT_LOAD = Col("upsOutputPercentLoad", oid(f"{_UPS}.4.4.1.5"), "%")
UPS_ALARMS = Col("upsAlarmsPresent", oid(f"{_UPS}.6.1"))
UPS_ALARM_DESCR = Col("upsAlarmDescr", oid(f"{_UPS}.6.2.1.2"))
_UPS_WELL_KNOWN = f"{_UPS}.6.3"  # upsWellKnownAlarms
UPS_SOURCES = {1: "other", 2: "none", 3: "normal", 4: "bypass", 5: "battery", 6: "booster", 7: "reducer"}

# ---- XUPS-MIB (Eaton / Powerware) ------------------------------------------------------------------
_X = "1.3.6.1.4.1.534.1"
XUPS_BAT_S = Col("xupsBatTimeRemaining", oid(f"{_X}.2.1"), "s")
XUPS_BAT_PCT = Col("xupsBatCapacity", oid(f"{_X}.2.4"), "%")
XUPS_IN_HZ = Col("xupsInputFrequency", oid(f"{_X}.3.1"), "0.1 Hz", 1, 10)
XUPS_IN_V = Col("xupsInputVoltage", oid(f"{_X}.3.4.1.2"), "V")
XUPS_OUT_LOAD = Col("xupsOutputLoad", oid(f"{_X}.4.1"), "%")
XUPS_OUT_W = Col("xupsOutputWatts", oid(f"{_X}.4.4.1.4"), "W")
XUPS_OUT_SOURCE = Col("xupsOutputSource", oid(f"{_X}.4.5"))
XUPS_ALARMS = Col("xupsAlarms", oid(f"{_X}.7.1"))
XUPS_ALARM_DESCR = Col("xupsAlarmDescr", oid(f"{_X}.7.2.1.2"))
# parallelCapacity(8), parallelRedundant(9), highEfficiencyMode(10) carry the load from the utility: normal.
XUPS_SOURCES = {**UPS_SOURCES, 8: "normal", 9: "normal", 10: "normal"}

# ---- TRIPPLITE-PRODUCTS (PowerAlert) transfer switches ---------------------------------------------
_TLP_ATS = "1.3.6.1.4.1.850.1.1.3.4.3"  # tlpAtsDetail
ATS_IN_LINE = Col("tlpAtsInputLineIndex", oid(f"{_TLP_ATS}.1.2.1.1"))
ATS_IN_PHASE = Col("tlpAtsInputPhaseIndex", oid(f"{_TLP_ATS}.1.2.1.2"))
ATS_IN_HZ = Col("tlpAtsInputPhaseFrequency", oid(f"{_TLP_ATS}.1.2.1.4"), "0.1 Hz", 1, 10)
ATS_IN_V = Col("tlpAtsInputPhaseVoltage", oid(f"{_TLP_ATS}.1.2.1.5"), "0.1 V", 1, 10)
ATS_OUT_W = Col("tlpAtsOutputActivePower", oid(f"{_TLP_ATS}.2.1.1.8"), "W")
ATS_OUT_KW = Col("tlpAtsOutputCalculatedPowerKW", oid(f"{_TLP_ATS}.2.1.1.13"), "0.01 kW", 10, 1)
TLP_ALARMS = Col("tlpAlarmsPresent", oid("1.3.6.1.4.1.850.1.3.1"))
TLP_ALARM_DESCR = Col("tlpAlarmDescr", oid("1.3.6.1.4.1.850.1.3.2.1.2"))

# ---- GEIST-V4-MIB environment monitors -------------------------------------------------------------
_G = "1.3.6.1.4.1.21239.5.1"
GEIST_UNITS = Col("productTempUnits", oid(f"{_G}.1.7"))  # 0 = Fahrenheit, 1 = Celsius
GEIST_INTERNAL_AVAIL = Col("internalAvail", oid(f"{_G}.2.1.4"))
GEIST_INTERNAL_TEMP = Col("internalTemp", oid(f"{_G}.2.1.5"), "0.1 degree", 1, 10)
GEIST_PROBE_AVAIL = Col("tempSensorAvail", oid(f"{_G}.4.1.4"))
GEIST_PROBE_TEMP = Col("tempSensorTemp", oid(f"{_G}.4.1.5"), "0.1 degree", 1, 10)
# A `probes` key names a probe: "internal.<index>" (internalTable) or "temp.<index>" (tempSensorTable).
GEIST_TABLES = {"internal": (GEIST_INTERNAL_AVAIL, GEIST_INTERNAL_TEMP), "temp": (GEIST_PROBE_AVAIL, GEIST_PROBE_TEMP)}

# Well-known alarm OIDs (a prefix: everything below it) -> the kind a FacilityReading lists.
ALARM_KINDS: tuple[tuple[OID, str], ...] = tuple((oid(o), k) for o, k in (
    # UPS-MIB upsWellKnownAlarms
    (f"{_UPS_WELL_KNOWN}.1", "battery_bad"), (f"{_UPS_WELL_KNOWN}.2", "on_battery"),
    (f"{_UPS_WELL_KNOWN}.3", "low_battery"), (f"{_UPS_WELL_KNOWN}.4", "battery_depleted"),
    (f"{_UPS_WELL_KNOWN}.5", "temperature_bad"), (f"{_UPS_WELL_KNOWN}.6", "input_bad"),
    (f"{_UPS_WELL_KNOWN}.7", "output_bad"), (f"{_UPS_WELL_KNOWN}.8", "output_overload"),
    (f"{_UPS_WELL_KNOWN}.9", "on_bypass"), (f"{_UPS_WELL_KNOWN}.10", "bypass_bad"),
    (f"{_UPS_WELL_KNOWN}.11", "output_off"), (f"{_UPS_WELL_KNOWN}.12", "output_off"),
    (f"{_UPS_WELL_KNOWN}.14", "output_off"), (f"{_UPS_WELL_KNOWN}.15", "output_off"),
    (f"{_UPS_WELL_KNOWN}.18", "general_fault"), (f"{_UPS_WELL_KNOWN}.20", "communications_lost"),
    (f"{_UPS_WELL_KNOWN}.22", "shutdown_pending"), (f"{_UPS_WELL_KNOWN}.23", "shutdown_imminent"),
    # XUPS-MIB xupsAlarm well-known alarms
    (f"{_X}.7.3", "on_battery"), (f"{_X}.7.4", "low_battery"), (f"{_X}.7.7", "output_overload"),
    (f"{_X}.7.8", "general_fault"), (f"{_X}.7.9", "battery_depleted"), (f"{_X}.7.10", "general_fault"),
    (f"{_X}.7.11", "on_bypass"), (f"{_X}.7.12", "bypass_bad"), (f"{_X}.7.13", "output_off"),
    (f"{_X}.7.14", "input_bad"), (f"{_X}.7.16", "shutdown_imminent"),
    # TRIPPLITE-PRODUCTS tlpAlarmsWellKnown: device and ATS alarms
    ("1.3.6.1.4.1.850.1.3.3.2.1", "communications_lost"),
    ("1.3.6.1.4.1.850.1.3.3.6.1.1", "source_a_lost"), ("1.3.6.1.4.1.850.1.3.3.6.1.2", "source_b_lost"),
    ("1.3.6.1.4.1.850.1.3.3.6.8", "outlet_off"), ("1.3.6.1.4.1.850.1.3.3.6.11", "outlet_off"),
))

# Wide sanity ranges per slot (the receiver's facility checks hold the physical ones); outside -> NaN + problem.
RANGES: dict[str, tuple[float, float]] = {
    "in_v": (0.0, 1000.0), "in_hz": (0.0, 100.0), "in_hz_all": (0.0, 100.0), "load": (0.0, 1000.0),
    "out_w": (0.0, 1e8), "batt_s": (0.0, 1e8), "batt_pct": (0.0, 100.0), "alarms": (0.0, 1e6),
    "temp": (-60.0, 300.0), "source": (-1e9, 1e9),
}

_WALKS: dict[str, tuple[Col, ...]] = {
    "ups-mib": (UPS_IN_V, UPS_IN_HZ, UPS_OUT_W, UPS_OUT_LOAD, UPS_OUT_SOURCE, UPS_MINUTES, UPS_CHARGE, UPS_ALARMS),
    "eaton-ups": (XUPS_IN_V, XUPS_IN_HZ, XUPS_OUT_W, XUPS_OUT_LOAD, XUPS_OUT_SOURCE, XUPS_BAT_S, XUPS_BAT_PCT,
                  XUPS_ALARMS),
    "tripplite-ats": (ATS_IN_LINE, ATS_IN_PHASE, ATS_IN_V, ATS_IN_HZ, ATS_OUT_W, ATS_OUT_KW, TLP_ALARMS),
    "geist": (GEIST_UNITS, GEIST_INTERNAL_AVAIL, GEIST_INTERNAL_TEMP, GEIST_PROBE_AVAIL, GEIST_PROBE_TEMP),
}
_ALARM_DESCR = {"ups-mib": UPS_ALARM_DESCR, "eaton-ups": XUPS_ALARM_DESCR, "tripplite-ats": TLP_ALARM_DESCR}
_SOURCES = {"ups-mib": UPS_SOURCES, "eaton-ups": XUPS_SOURCES}


def walk_columns(model: str) -> tuple[Col, ...]:
    return _WALKS[model]


def probe_key_ok(key: str) -> bool:
    """A `probes` key: internal.<n> or temp.<n>."""
    table, _, index = key.partition(".")
    return table in GEIST_TABLES and index.isdigit()


# ---------------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FPoint:
    oid: OID
    label: str
    slot: str  # in_v | in_hz | in_hz_all | load | out_w | source | batt_s | batt_pct | alarms | temp
    pos: int
    col: Col


@dataclass(frozen=True)
class FacilityPlan:
    model: str
    points: tuple[FPoint, ...]
    n_in: int = 0
    n_out: int = 0
    n_load: int = 0
    racks: tuple[str, ...] = ()  # env: the rack of each inlet slot
    fahrenheit: bool = False  # geist: the device reports degrees Fahrenheit
    notes: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return kind_of(self.model)

    @property
    def alarm_col(self) -> Col | None:
        """The alarm table's description column, walked when the device reports alarms."""
        return _ALARM_DESCR.get(self.model)

    def describe(self) -> str:
        if self.kind == "env":
            return f"model {self.model}: {len(self.racks)} inlet probe(s), {len(self.points)} OIDs per poll"
        return (f"model {self.model}: {self.n_in} input line(s), {self.n_out} output line(s), "
                f"{len(self.points)} OIDs per poll")


@dataclass
class _Builder:
    model: str
    points: list[FPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, slot: str, pos: int, col: Col, index: OID, data: Mapping[OID, Raw]) -> None:
        if index in data:
            self.points.append(FPoint(col.oid + index, f"{col.name}.{oid_str(index)}", slot, pos, col))
        else:
            self.notes.append(f"{col.name}.{oid_str(index)} not served (reported as NaN)")

    def scalar(self, slot: str, col: Col, walked: Walked) -> None:
        rows = walked.get(col.oid, {})
        if (0,) in rows:
            self.add(slot, 0, col, (0,), rows)
        else:
            self.notes.append(f"{col.name}.0 not served")


def _ints(walked: Walked, col: Col) -> dict[OID, int]:
    return {i: v for i, v in walked.get(col.oid, {}).items() if isinstance(v, int)}


def _ups_plan(b: _Builder, walked: Walked) -> tuple[int, int, int]:
    """ups-mib and eaton-ups: input and output tables plus the scalars; (n_in, n_out, n_load)."""
    xups = b.model == "eaton-ups"
    in_v, in_hz, out_w, out_load = ((XUPS_IN_V, XUPS_IN_HZ, XUPS_OUT_W, XUPS_OUT_LOAD) if xups
                                    else (UPS_IN_V, UPS_IN_HZ, UPS_OUT_W, UPS_OUT_LOAD))
    v_rows, w_rows = walked.get(in_v.oid, {}), walked.get(out_w.oid, {})
    inputs = sorted(set(v_rows) | (set() if xups else set(walked.get(in_hz.oid, {}))))
    outputs = sorted(set(w_rows) | (set() if xups else set(walked.get(out_load.oid, {}))))
    for pos, r in enumerate(inputs):
        b.add("in_v", pos, in_v, r, v_rows)
        if not xups:
            b.add("in_hz", pos, in_hz, r, walked.get(in_hz.oid, {}))
    for pos, r in enumerate(outputs):
        b.add("out_w", pos, out_w, r, w_rows)
        if not xups:
            b.add("load", pos, out_load, r, walked.get(out_load.oid, {}))
    if xups:  # one frequency for every input phase, one load for the whole unit
        b.scalar("in_hz_all", in_hz, walked)
        b.scalar("load", out_load, walked)
    for slot, col in (("source", XUPS_OUT_SOURCE if xups else UPS_OUT_SOURCE),
                      ("batt_s", XUPS_BAT_S if xups else UPS_MINUTES),
                      ("batt_pct", XUPS_BAT_PCT if xups else UPS_CHARGE),
                      ("alarms", XUPS_ALARMS if xups else UPS_ALARMS)):
        b.scalar(slot, col, walked)
    if not inputs:
        b.notes.append(f"no {in_v.name} rows")
    return len(inputs), len(outputs), 1 if xups else len(outputs)


def _ats_plan(b: _Builder, walked: Walked) -> tuple[int, int]:
    """tripplite-ats: input lines in (line, phase) order, output power per output row; (n_in, n_out)."""
    line, phase = _ints(walked, ATS_IN_LINE), _ints(walked, ATS_IN_PHASE)
    v_rows, hz_rows = walked.get(ATS_IN_V.oid, {}), walked.get(ATS_IN_HZ.oid, {})
    # The line and phase columns say which row is which: the recorded agent orders its index otherwise.
    inputs = sorted(set(v_rows) | set(hz_rows), key=lambda r: (line.get(r, 1 << 31), phase.get(r, 1 << 31), r))
    for pos, r in enumerate(inputs):
        b.add("in_v", pos, ATS_IN_V, r, v_rows)
        b.add("in_hz", pos, ATS_IN_HZ, r, hz_rows)
    w_rows, kw_rows = walked.get(ATS_OUT_W.oid, {}), walked.get(ATS_OUT_KW.oid, {})
    outputs = sorted(set(w_rows) | set(kw_rows))
    for pos, r in enumerate(outputs):
        b.add("out_w", pos, ATS_OUT_W if r in w_rows else ATS_OUT_KW, r, w_rows if r in w_rows else kw_rows)
    b.scalar("alarms", TLP_ALARMS, walked)
    if not inputs:
        b.notes.append(f"no {ATS_IN_V.name} rows")
    return len(inputs), len(outputs)


def _env_plan(b: _Builder, walked: Walked, probes: Mapping[str, str]) -> tuple[tuple[str, ...], bool]:
    """geist: one inlet slot per configured probe, in the table's order; (racks, fahrenheit)."""
    units = walked.get(GEIST_UNITS.oid, {}).get((0,))
    racks: list[str] = []
    for pos, (key, rack) in enumerate(probes.items()):
        table, _, index = key.partition(".")
        avail_col, temp_col = GEIST_TABLES[table]
        idx = (int(index),)
        racks.append(rack)
        if walked.get(avail_col.oid, {}).get(idx) == 0:
            b.notes.append(f"probe {key} ({temp_col.name}.{index}) is not available (reported as NaN)")
            continue
        b.add("temp", pos, temp_col, idx, walked.get(temp_col.oid, {}))
    return tuple(racks), units == 0


def make_plan(model: str, walked: Walked, *, probes: Mapping[str, str] | None = None) -> FacilityPlan:
    """The poll plan of a facility device from its discovery walk."""
    b = _Builder(model)
    if model in UPS_MODELS:
        n_in, n_out, n_load = _ups_plan(b, walked)
        return FacilityPlan(model, tuple(b.points), n_in, n_out, n_load, notes=tuple(b.notes))
    if model in ATS_MODELS:
        n_in, n_out = _ats_plan(b, walked)
        return FacilityPlan(model, tuple(b.points), n_in, n_out, notes=tuple(b.notes))
    if model in ENV_MODELS:
        racks, fahrenheit = _env_plan(b, walked, probes or {})
        return FacilityPlan(model, tuple(b.points), racks=racks, fahrenheit=fahrenheit, notes=tuple(b.notes))
    raise ValueError(f"unknown facility model {model!r}")


# ---------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    key: str
    message: str


@dataclass
class FacilityValues:
    """One poll's readings in SI units; NaN / None = no reading."""

    input_voltage_v: list[float]
    input_frequency_hz: list[float]
    output_load_pct: list[float]
    output_power_w: list[float]
    inlet_c: list[float]
    output_source: str | None = None
    battery_remaining_s: float | None = None
    battery_charge_pct: float | None = None
    alarms: int | None = None
    problems: list[Problem] = field(default_factory=list)
    gone: bool = False

    def usable(self) -> bool:
        lists = (self.input_voltage_v, self.input_frequency_hz, self.output_load_pct, self.output_power_w,
                 self.inlet_c)
        return (any(not math.isnan(v) for values in lists for v in values) or self.output_source is not None
                or self.battery_remaining_s is not None or self.battery_charge_pct is not None
                or self.alarms is not None)


def _value(p: FPoint, raw: Raw) -> tuple[float, Problem | None]:
    where = f"{oid_str(p.oid)} ({p.label})"
    if isinstance(raw, bool) or not isinstance(raw, int):
        if isinstance(raw, Absent):
            return math.nan, Problem(f"{where}:absent", f"{where} answered {raw.value}")
        return math.nan, Problem(f"{where}:type", f"{where} is {describe(raw)}, expected an integer")
    value = raw * p.col.mul / p.col.div if p.col.div != 1 else float(raw * p.col.mul)
    lo, hi = RANGES[p.slot]
    if not lo <= value <= hi:
        return math.nan, Problem(f"{where}:range", f"{where} = {raw} ({value:g} SI) is outside [{lo:g}, {hi:g}]")
    return value, None


def convert(plan: FacilityPlan, answers: Mapping[OID, Raw]) -> FacilityValues:
    """One poll's GET answers -> SI readings along the plan."""
    nan = math.nan
    out = FacilityValues([nan] * plan.n_in, [nan] * plan.n_in, [nan] * plan.n_load, [nan] * plan.n_out,
                         [nan] * len(plan.racks))
    lists = {"in_v": out.input_voltage_v, "in_hz": out.input_frequency_hz, "load": out.output_load_pct,
             "out_w": out.output_power_w, "temp": out.inlet_c}
    for p in plan.points:
        raw = answers.get(p.oid, Absent.NO_SUCH_INSTANCE)
        value, problem = _value(p, raw)
        if problem is not None:
            out.problems.append(problem)
            out.gone = out.gone or isinstance(raw, Absent)
            continue
        if p.slot == "temp" and plan.fahrenheit:
            value = (value - 32.0) * 5.0 / 9.0
        if p.slot in lists:
            lists[p.slot][p.pos] = value
        elif p.slot == "in_hz_all":
            out.input_frequency_hz[:] = [value] * plan.n_in
        elif p.slot == "source":
            out.output_source = _SOURCES[plan.model].get(int(value), "other")
        elif p.slot == "batt_s":
            out.battery_remaining_s = value
        elif p.slot == "batt_pct":
            out.battery_charge_pct = value
        elif p.slot == "alarms":
            out.alarms = int(value)
    return out


def alarm_kinds(descr: Mapping[OID, Raw]) -> list[str]:
    """The kinds of the alarms listed in an alarm table's description column (row -> OID), sorted, each once;
    an alarm of no well-known kind is "other"."""
    kinds: set[str] = set()
    for value in descr.values():
        if not isinstance(value, tuple):
            continue
        kinds.add(next((k for base, k in ALARM_KINDS if value == base or prefix_of(value, base) is not None),
                       "other"))
    return sorted(kinds)


def check_probes(probes: Sequence[str]) -> list[str]:
    """The `probes` keys that name no probe."""
    return [k for k in probes if not probe_key_ok(k)]
