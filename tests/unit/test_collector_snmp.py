"""The `snmp` source without an agent: OIDs, model detection, poll plans, scaling, options, failure policy."""

from __future__ import annotations

import logging
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from pysnmp.proto import rfc1902, rfc1905

from collectors.base import SourceConfigError, SourceError, load_source
from collectors.snmp import models as m
from collectors.snmp.client import to_raw
from collectors.snmp.models import Absent, Junk, Problem, Reading, oid
from collectors.snmp.source import SnmpSource
from powerplane.schemas import TelemetryFrame

NAN = math.nan


def options(**kw: object) -> dict[str, object]:
    return {"kind": "snmp", "host": "192.0.2.21", "site": "lab", "rack": "r01", "feed": "A", **kw}


def same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


# ---- OIDs ------------------------------------------------------------------------------------------
def test_oid_round_trip_and_prefix() -> None:
    o = oid(".1.3.6.1.4.1.318.1.1.26.4.3.1.5.1")
    assert o == (1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 4, 3, 1, 5, 1)
    assert m.oid_str(o) == "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1"
    assert m.prefix_of(o, m.RPDU2_DEV_POWER.oid) == (1,)
    assert m.prefix_of(m.RPDU2_DEV_POWER.oid, m.RPDU2_DEV_POWER.oid) is None  # the column itself is no row
    assert m.prefix_of(oid("1.3.6.1.4.1.318.1.1.26.4.3.1.6.1"), m.RPDU2_DEV_POWER.oid) is None


# ---- detection --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("hits", "model"), [
    ({"apc-rpdu2": True, "apc-rpdu": True}, "apc-rpdu2"),  # rPDU2 firmware serves both; rPDU2 wins
    ({"apc-rpdu": True}, "apc-rpdu"),
    ({"eaton": True}, "eaton"),
    ({"vertiv": True}, "vertiv"),
    ({"apc-rpdu2": False, "eaton": False}, None),
    ({}, None),
])
def test_detect_model(hits: dict[str, bool], model: str | None) -> None:
    assert m.detect_model(hits) == model


# ---- scaling ----------------------------------------------------------------------------------------
def point(col: m.Col, kind: str, index: tuple[int, ...] = (1,), pos: int = 0) -> m.Point:
    return m.Point(col.oid + index, f"{col.name}.1", kind, pos, col)


@pytest.mark.parametrize(("col", "kind", "raw", "si"), [
    (m.RPDU2_DEV_POWER, "power", 121, 1210.0),  # hundredths of kW -> W
    (m.RPDU2_PHASE_CURRENT, "phase", 65, 6.5),  # tenths of A
    (m.RPDU2_BANK_CURRENT, "bank", 38, 3.8),
    (m.RPDU2_OUTLET_POWER, "outlet", 163, 163.0),  # W
    (m.RPDU2_SENSOR_TEMP, "temp", 235, 23.5),  # tenths of C
    (m.RPDU2_SENSOR_TEMP, "temp", -52, -5.2),  # a negative temperature other than -1 is a reading
    (m.RPDU_POWER, "power", 192, 192.0),  # W
    (m.RPDU_LOAD, "phase", 66, 6.6),  # tenths of A
    (m.UIO_TEMP, "temp", 27, 27.0),  # whole C
    (m.XUPS_OUT_WATTS, "power", 5100, 5100.0),
    (m.XUPS_OUT_CURRENT, "phase", 27, 27.0),  # whole A
    (m.XUPS_OUT_CURRENT_HP, "phase", 271, 27.1),  # tenths of A
    (m.XUPS_AMBIENT, "temp", 25, 25.0),
    (m.LGP_TEMP, "temp", 23, 23.0),
])
def test_scaled_is_exact(col: m.Col, kind: str, raw: int, si: float) -> None:
    value, problem = m.scaled(point(col, kind), raw)
    assert problem is None
    assert value == si  # exact: tenths are divided by 10, not multiplied by 0.1


def test_scaled_no_reading_junk_absent_and_range() -> None:
    p = point(m.RPDU2_DEV_POWER, "power")
    value, problem = m.scaled(p, -1)  # the MIB's "not supported": NaN, and not a problem
    assert math.isnan(value) and problem is None
    value, problem = m.scaled(p, Junk("OctetString", "'garbage'"))
    assert math.isnan(value) and problem is not None
    assert problem.message == ("1.3.6.1.4.1.318.1.1.26.4.3.1.5.1 (rPDU2DeviceStatusPower.1) is OctetString "
                               "'garbage', expected an integer")
    value, problem = m.scaled(p, Absent.NO_SUCH_INSTANCE)
    assert math.isnan(value) and problem is not None and "noSuchInstance" in problem.message
    value, problem = m.scaled(p, (1, 3, 6))
    assert math.isnan(value) and problem is not None and "OBJECT IDENTIFIER 1.3.6" in problem.message
    value, problem = m.scaled(p, -7)  # negative power: out of range, never a silent negative
    assert math.isnan(value) and problem is not None and "outside" in problem.message
    value, problem = m.scaled(point(m.XUPS_OUT_WATTS, "power"), -1)  # XUPS defines no -1 sentinel
    assert math.isnan(value) and problem is not None


# ---- plans --------------------------------------------------------------------------------------------
def rows(col: m.Col, values: dict[tuple[int, ...], m.Raw]) -> tuple[m.OID, dict[m.OID, m.Raw]]:
    return col.oid, dict(values)


def rpdu2_walk() -> dict[m.OID, dict[m.OID, m.Raw]]:
    """Two daisy-chained units: module 1 (3 phases... listed out of order) and module 2."""
    return dict([
        rows(m.RPDU2_DEV_MODULE, {(1,): 1, (2,): 2}),
        rows(m.RPDU2_DEV_POWER, {(1,): 121, (2,): 50}),
        rows(m.RPDU_POWER, {(0,): 1230}),
        rows(m.RPDU2_PHASE_MODULE, {(1,): 1, (2,): 1, (3,): 2}),
        rows(m.RPDU2_PHASE_NUMBER, {(1,): 2, (2,): 1, (3,): 1}),
        rows(m.RPDU2_PHASE_CURRENT, {(1,): 20, (2,): 10, (3,): 30}),
        rows(m.RPDU2_BANK_MODULE, {(1,): 1, (2,): 1}),
        rows(m.RPDU2_BANK_NUMBER, {(1,): 1, (2,): 2}),
        rows(m.RPDU2_BANK_CURRENT, {(1,): 38}),  # bank 2 listed, but its current not served
        rows(m.RPDU2_OUTLET_MODULE, {(1,): 1, (2,): 1, (25,): 2}),
        rows(m.RPDU2_OUTLET_NUMBER, {(1,): 1, (2,): 2, (25,): 1}),
        rows(m.RPDU2_OUTLET_POWER, {(1,): 163, (2,): 4, (25,): 99}),
        rows(m.RPDU2_SENSOR_MODULE, {(1,): 1}),
        rows(m.RPDU2_SENSOR_TEMP, {(1,): 235}),
        rows(m.UIO_TEMP, {(2, 1): 22}),
    ])


def test_plan_apc_rpdu2_module_1() -> None:
    plan = m.make_plan("apc-rpdu2", rpdu2_walk(), module=1)
    labels = [(p.kind, p.pos, p.label) for p in plan.points]
    assert labels == [
        ("power", 0, "rPDU2DeviceStatusPower.1"),
        ("power_fallback", 0, "rPDUIdentDevicePowerWatts.0"),
        ("phase", 0, "rPDU2PhaseStatusCurrent.2"),  # phase number 1 first
        ("phase", 1, "rPDU2PhaseStatusCurrent.1"),
        ("bank", 0, "rPDU2BankStatusCurrent.1"),
        ("outlet", 0, "rPDU2OutletMeteredStatusPower.1"),
        ("outlet", 1, "rPDU2OutletMeteredStatusPower.2"),
        ("temp", 0, "rPDU2SensorTempHumidityStatusTempC.1"),
        ("temp", 1, "uioSensorStatusTemperatureDegC.2.1"),
    ]
    assert (plan.n_phase, plan.n_bank, plan.n_outlet, plan.n_temp) == (2, 2, 2, 2)
    assert plan.notes == ("rPDU2BankStatusCurrent.2 not served (reported as NaN)",)


def test_plan_without_outlets() -> None:
    assert m.RPDU2_OUTLET_POWER not in m.walk_columns("apc-rpdu2", outlets=False)
    plan = m.make_plan("apc-rpdu2", rpdu2_walk(), outlets=False)
    assert plan.n_outlet == 0 and not any(p.kind == "outlet" for p in plan.points)
    assert len(plan.points) == 7


def test_plan_apc_rpdu2_module_2_has_no_host_only_readings() -> None:
    plan = m.make_plan("apc-rpdu2", rpdu2_walk(), module=2)
    assert [p.label for p in plan.points] == [
        "rPDU2DeviceStatusPower.2", "rPDU2PhaseStatusCurrent.3", "rPDU2OutletMeteredStatusPower.25"]
    assert (plan.n_phase, plan.n_bank, plan.n_outlet, plan.n_temp) == (1, 0, 1, 0)


def test_plan_apc_rpdu_splits_phases_and_banks() -> None:
    walked = dict([
        rows(m.RPDU_POWER, {(0,): 192}),
        rows(m.RPDU_LOAD, {(1,): 16, (2,): 0, (3,): 11}),
        rows(m.RPDU_LOAD_PHASE, {(1,): 1, (2,): 0, (3,): 0}),
        rows(m.RPDU_LOAD_BANK, {(1,): 0, (2,): 1, (3,): 2}),
    ])
    plan = m.make_plan("apc-rpdu", walked)
    assert [(p.kind, p.pos, p.label) for p in plan.points] == [
        ("power", 0, "rPDUIdentDevicePowerWatts.0"), ("phase", 0, "rPDULoadStatusLoad.1"),
        ("bank", 0, "rPDULoadStatusLoad.2"), ("bank", 1, "rPDULoadStatusLoad.3")]
    r = m.convert(plan, {p.oid: v for p, v in zip(plan.points, (192, 16, 0, 11), strict=True)})
    assert (r.power_w, r.phase_a, r.bank_a) == (192.0, [1.6], [0.0, 1.1])


def test_plan_eaton_prefers_high_precision_current() -> None:
    walked = dict([
        rows(m.XUPS_OUT_WATTS, {(1,): 5100, (2,): 3600}),
        rows(m.XUPS_OUT_CURRENT, {(1,): 27, (2,): 18}),
        rows(m.XUPS_OUT_CURRENT_HP, {(2,): 183}),
        rows(m.XUPS_AMBIENT, {(0,): 25}),
    ])
    plan = m.make_plan("eaton", walked)
    assert [p.label for p in plan.points] == [
        "xupsOutputWatts.1", "xupsOutputCurrent.1", "xupsOutputWatts.2", "xupsOutputCurrentHighPrecision.2",
        "xupsEnvAmbientTemp.0"]
    r = m.convert(plan, {p.oid: v for p, v in zip(plan.points, (5100, 27, 3600, 183, 25), strict=True)})
    assert (r.power_w, r.phase_a, r.inlet_c) == (8700.0, [27.0, 18.3], [25.0])


def test_plan_vertiv_selects_points_by_description() -> None:
    wk = m._LGP_WELL_KNOWN
    walked = dict([
        rows(m.LGP_TEMP_DESCR, {(1,): oid(f"{wk}.1"), (2,): oid(f"{wk}.3"), (3,): oid(f"{wk}.2"),
                                (4,): oid(f"{wk}.11.1"), (5,): oid(f"{wk}.19.2"), (6,): oid(f"{wk}.10.2")}),
        rows(m.LGP_TEMP, {(1,): 23, (3,): 23, (4,): 29, (5,): 9, (6,): 21}),
    ])
    default = m.make_plan("vertiv", walked)  # supply (row 2, no measurement) and local sensor 2 (row 6)
    assert [p.label for p in default.points] == ["lgpEnvTemperatureMeasurementDegC.6"]
    assert default.n_temp == 2 and default.notes == ("lgpEnvTemperatureMeasurementDegC.2 not served "
                                                     "(reported as NaN)",)
    r = m.convert(default, {default.points[0].oid: 21})
    assert same(r.inlet_c, [NAN, 21.0])
    chosen = m.make_plan("vertiv", walked, temp_points=["control", "return"])
    assert [p.label for p in chosen.points] == ["lgpEnvTemperatureMeasurementDegC.1",
                                                "lgpEnvTemperatureMeasurementDegC.3"]


# ---- conversion ---------------------------------------------------------------------------------------
def test_convert_falls_back_to_ident_power_when_rpdu2_says_unsupported() -> None:
    plan = m.make_plan("apc-rpdu2", rpdu2_walk())
    answers = {p.oid: 0 for p in plan.points}
    answers[(*m.RPDU2_DEV_POWER.oid, 1)] = -1  # AP7902B: rPDU2DeviceStatusPower -1
    answers[(*m.RPDU_POWER.oid, 0)] = 192
    r = m.convert(plan, answers)
    assert r.power_w == 192.0 and r.problems == [] and not r.gone


def test_convert_partial_and_missing() -> None:
    plan = m.make_plan("apc-rpdu2", rpdu2_walk())
    answers: dict[m.OID, m.Raw] = {p.oid: 10 for p in plan.points}
    answers[(*m.RPDU2_DEV_POWER.oid, 1)] = Junk("OctetString", "'x'")
    answers[(*m.RPDU_POWER.oid, 0)] = -1
    del answers[(*m.RPDU2_OUTLET_POWER.oid, 2)]  # not in the answer at all: noSuchInstance
    r = m.convert(plan, answers)
    assert math.isnan(r.power_w)
    assert r.phase_a == [1.0, 1.0] and same(r.bank_a, [1.0, NAN]) and same(r.outlet_w, [10.0, NAN])
    assert [p.key.rsplit(":", 1)[1] for p in r.problems] == ["type", "absent"]
    assert r.gone and r.usable()


def test_convert_sum_of_phases_is_nan_when_a_phase_is_missing() -> None:
    walked = dict([rows(m.XUPS_OUT_WATTS, {(1,): 1, (2,): 1, (3,): 1})])
    plan = m.make_plan("eaton", walked)
    w = [p.oid for p in plan.points if p.kind == "power"]
    r = m.convert(plan, {w[0]: 5100, w[1]: 3600, w[2]: Junk("OctetString", "'?'")})
    assert math.isnan(r.power_w) and len(r.problems) == 1  # 8700 W would under-report the load
    r = m.convert(plan, {w[0]: 5100, w[1]: 3600, w[2]: 2700})
    assert r.power_w == 11400.0


def test_nothing_usable() -> None:
    r = Reading(NAN, [NAN], [], [], [NAN], [])
    assert not r.usable()
    assert Reading(NAN, [], [], [], [0.0], []).usable()


# ---- pysnmp values -> plain Python ---------------------------------------------------------------------
def test_to_raw() -> None:
    assert to_raw(rfc1902.Integer32(-1)) == -1
    assert to_raw(rfc1902.Gauge32(66)) == 66
    assert to_raw(rfc1902.Counter64(2**40)) == 2**40
    assert to_raw(rfc1902.ObjectIdentifier("1.3.6.1.4.1.318")) == (1, 3, 6, 1, 4, 1, 318)
    assert to_raw(rfc1905.NoSuchInstance("")) is Absent.NO_SUCH_INSTANCE
    assert to_raw(rfc1905.NoSuchObject("")) is Absent.NO_SUCH_OBJECT
    assert to_raw(rfc1905.EndOfMibView("")) is Absent.END_OF_MIB
    assert to_raw(rfc1902.OctetString("12.5 kW")) == Junk("OctetString", "'12.5 kW'")
    assert to_raw(rfc1902.TimeTicks(100)) == Junk("TimeTicks", "'100'")  # a time is not a meter reading


# ---- options ----------------------------------------------------------------------------------------------
def test_configure_defaults_without_io() -> None:
    s = load_source("pdu-a01", options())
    assert isinstance(s, SnmpSource)
    assert (s.port, s.community, s.version, s.model, s.interval_s, s.timeout_s, s.retries) == (
        161, "public", "2c", "auto", 10.0, 5.0, 1)
    assert s.try_timeout_s == 2.0  # 80% of timeout_s over 1 + retries tries
    assert s.temp_points == m.VERTIV_DEFAULT_POINTS


def test_sample_config_loads() -> None:
    sample = Path(__file__).resolve().parents[2] / "collectors" / "snmp" / "sample.toml"
    sources = tomllib.loads(sample.read_text())["sources"]
    built = {name: load_source(name, opts) for name, opts in sources.items()}
    assert {s.kind for s in built.values()} == {"snmp"} and len(built) == 3


@pytest.mark.parametrize(("bad", "key"), [
    ({"host": ""}, "host"), ({"host": None}, "host"), ({"port": 0}, "port"), ({"port": "161"}, "port"),
    ({"version": "3"}, "version"), ({"version": 2}, "version"), ({"feed": "C"}, "feed"), ({"feed": None}, "feed"),
    ({"rack": ""}, "rack"), ({"model": "raritan"}, "model"), ({"retries": -1}, "retries"),
    ({"timeout_s": 0}, "timeout_s"), ({"temp_points": ["inlet"]}, "temp_points"), ({"temp_points": []}, "temp_points"),
    ({"module": 0}, "module"), ({"community": ""}, "community"), ({"site": None}, "site"),
    ({"outlets": "no"}, "outlets"), ({"max_varbinds": 0}, "max_varbinds"), ({"rediscover_s": -1}, "rediscover_s"),
])
def test_configure_names_the_bad_key(bad: dict[str, object], key: str) -> None:
    opts = options(**bad)
    if bad.get("site", "") is None:
        del opts["site"]  # and no site model in the context either
    with pytest.raises(SourceConfigError, match=f"option '{key}'"):
        load_source("pdu-a01", opts)


# ---- frames and the failure policy ------------------------------------------------------------------------
def test_frame_carries_one_feed_and_optional_arrays() -> None:
    s = load_source("pdu-b01", options(feed="B"))
    assert isinstance(s, SnmpSource)
    f = s.to_frame(Reading(1210.0, [6.5], [3.8, 2.4], [], [NAN], []))
    assert same(f.pdu_power_w, [NAN, 1210.0]) and same(f.inlet_c, [NAN])
    assert f.pdu_phase_current_a is not None and f.pdu_phase_current_a.dtype == np.float32
    np.testing.assert_array_equal(f.pdu_bank_current_a, np.array([3.8, 2.4], np.float32))
    assert f.pdu_outlet_power_w is None and f.power_w.size == 0
    back = TelemetryFrame.decode(f.encode())
    assert back.rack == "r01" and back.source == "pdu-b01" and same(back.pdu_power_w, [NAN, 1210.0])


def test_report_raises_when_nothing_usable_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    s = load_source("pdu-a01", options())
    assert isinstance(s, SnmpSource)
    bad = Problem("x:type", "1.2.3 (x.1) is OctetString 'junk', expected an integer")
    with pytest.raises(SourceError, match=r"^snmp 192\.0\.2\.21:161: no usable reading: 1\.2\.3 \(x\.1\) is Octet"):
        s._report(Reading(NAN, [], [], [], [], [bad]))
    caplog.set_level(logging.WARNING, "collectors.snmp")
    partial = Reading(NAN, [6.5], [], [], [], [bad])
    s._report(partial)
    s._report(partial)
    warned = [r for r in caplog.records if "partial read" in r.getMessage()]
    assert len(warned) == 1 and "OctetString 'junk'" in warned[0].getMessage()
    assert s.problems == [bad.message] and s.partial_reads == 2
    s._report(Reading(1.0, [6.5], [], [], [], []))  # clears; the same problem later is logged again
    assert s.problems == []
    s._report(partial)
    assert len([r for r in caplog.records if "partial read" in r.getMessage()]) == 2
