"""The `snmp` source without an agent: OIDs, model detection, poll plans, scaling, options, failure policy."""

from __future__ import annotations

import logging
import math
import random
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyasn1.codec.ber import decoder as pyasn1_decoder
from pyasn1.codec.ber import encoder as pyasn1_encoder
from pysnmp.proto import api, rfc1902, rfc1905
from pysnmp.proto.proxy import rfc2576

from collectors.base import SourceConfigError, SourceError, load_source
from collectors.snmp import ber
from collectors.snmp import models as m
from collectors.snmp.client import to_raw
from collectors.snmp.models import Absent, Junk, Problem, Reading, oid
from collectors.snmp.source import SnmpSource
from powerplane.schemas import TelemetryFrame
from powerplane.validation import ConfigError

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
    assert s.codec == "fast" and s.client.codec == "fast"
    assert s.temp_points == m.VERTIV_DEFAULT_POINTS


def test_sample_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    sample = Path(__file__).resolve().parents[2] / "collectors" / "snmp" / "sample.toml"
    sources = tomllib.loads(sample.read_text())["sources"]
    monkeypatch.setenv("PP_SNMP_AUTH_KEY", "sample-auth-key")  # the sample's v3 keys
    monkeypatch.setenv("PP_SNMP_PRIV_KEY", "sample-priv-key")
    built = {name: load_source(name, opts) for name, opts in sources.items()}
    assert {s.kind for s in built.values()} == {"snmp"} and len(built) == 6


@pytest.mark.parametrize(("bad", "key"), [
    ({"host": ""}, "host"), ({"host": None}, "host"), ({"port": 0}, "port"), ({"port": "161"}, "port"),
    ({"version": "4"}, "version"), ({"version": 2}, "version"), ({"feed": "C"}, "feed"), ({"feed": None}, "feed"),
    ({"rack": ""}, "rack"), ({"model": "raritan"}, "model"), ({"retries": -1}, "retries"),
    ({"timeout_s": 0}, "timeout_s"), ({"temp_points": ["inlet"]}, "temp_points"), ({"temp_points": []}, "temp_points"),
    ({"module": 0}, "module"), ({"community": ""}, "community"), ({"site": None}, "site"),
    ({"outlets": "no"}, "outlets"), ({"max_varbinds": 0}, "max_varbinds"), ({"rediscover_s": -1}, "rediscover_s"),
    ({"codec": "pyasn1"}, "codec"), ({"codec": True}, "codec"), ({"community": "\u20ac-pdu"}, "community"),
])
def test_configure_names_the_bad_key(bad: dict[str, object], key: str) -> None:
    opts = options(**bad)
    if bad.get("site", "") is None:
        del opts["site"]  # and no site model in the context either
    with pytest.raises(SourceConfigError) as e:
        load_source("pdu-a01", opts)
    [line] = e.value.errors
    assert line.startswith(f"sources.pdu-a01.{key}: ")


def test_every_mistake_of_a_table_is_reported_at_once_with_its_path() -> None:
    opts = options(port=70000, retries="1", colour="red")
    del opts["feed"]
    with pytest.raises(ConfigError) as e:  # the one error class of every config mistake
        load_source("pdu-a01", opts)
    assert isinstance(e.value, SourceConfigError)
    assert sorted(e.value.errors) == [
        "sources.pdu-a01.colour: unknown key",
        "sources.pdu-a01.feed: missing (required)",
        "sources.pdu-a01.port: input should be less than or equal to 65535, got 70000",
        "sources.pdu-a01.retries: input should be a valid integer, got '1'",
    ]


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


# ---- the fast path's BER codec (collectors/snmp/ber.py) ---------------------------------------------------
APC_OUTLET_POWER_1 = oid("1.3.6.1.4.1.318.1.1.26.9.4.3.1.7.1")

# (encoded value, the Raw it decodes to): every type an SNMP v1/v2c response carries, with the edges
VALUES: list[tuple[bytes, m.Raw]] = [
    (ber.encode_integer(0), 0),
    (ber.encode_integer(-1), -1),
    (ber.encode_integer(127), 127),
    (ber.encode_integer(128), 128),  # 02 02 00 80: the leading zero keeps it positive
    (ber.encode_integer(-128), -128),
    (ber.encode_integer(-129), -129),
    (ber.encode_integer(2**31 - 1), 2**31 - 1),
    (ber.encode_integer(-(2**31)), -(2**31)),
    (ber.encode_integer(0, ber.COUNTER32), 0),
    (ber.encode_integer(2**32 - 1, ber.COUNTER32), 2**32 - 1),  # 41 05 00 ff ff ff ff
    (ber.encode_integer(66, ber.GAUGE32), 66),
    (ber.encode_integer(2**32 - 1, ber.GAUGE32), 2**32 - 1),
    (ber.encode_integer(2**64 - 1, ber.COUNTER64), 2**64 - 1),  # 46 09 00 ff..ff
    (ber.encode_integer(2**63, ber.COUNTER64), 2**63),
    (ber.encode_integer(0, ber.COUNTER64), 0),
    (ber.encode_integer(100, ber.TIME_TICKS), Junk("TimeTicks", "'100'")),  # a time is not a meter reading
    (ber.encode_integer(2**32 - 1, ber.TIME_TICKS), Junk("TimeTicks", "'4294967295'")),
    (ber.encode_tlv(ber.OCTET_STRING, b"12kW?!"), Junk("OctetString", "'12kW?!'")),
    (ber.encode_tlv(ber.OCTET_STRING, b""), Junk("OctetString", "''")),
    (ber.encode_tlv(ber.OCTET_STRING, b"a\tb"), Junk("OctetString", "'0x610962'")),  # pysnmp hexifies a tab
    (ber.encode_tlv(ber.OCTET_STRING, b"\xff" * 30), Junk("OctetString", repr(("0x" + "ff" * 30)[:40]))),
    (ber.encode_tlv(ber.OCTET_STRING, b"x" * 50), Junk("OctetString", repr("x" * 40))),
    (ber.encode_tlv(ber.IP_ADDRESS, bytes([10, 1, 2, 3])), Junk("IpAddress", "'10.1.2.3'")),
    (ber.encode_tlv(ber.OPAQUE, b"ab\x01"), Junk("Opaque", "'0x616201'")),
    (ber.encode_tlv(ber.OPAQUE, b"abc"), Junk("Opaque", "'abc'")),
    (b"\x05\x00", Junk("Null", "''")),
    (ber.encode_oid((1, 3, 6, 1, 4, 1, 318, 1, 3, 4, 6)), (1, 3, 6, 1, 4, 1, 318, 1, 3, 4, 6)),
    (ber.encode_oid((1, 3, 6, 1, 4, 1, 2**32 - 1, 0, 127, 128, 16383, 16384)),
     (1, 3, 6, 1, 4, 1, 2**32 - 1, 0, 127, 128, 16383, 16384)),
    (ber.encode_oid((2, 999, 3)), (2, 999, 3)),  # first sub-identifier over 127: two octets
    (ber.encode_oid((0, 0)), (0, 0)),
    (b"\x80\x00", Absent.NO_SUCH_OBJECT),
    (b"\x81\x00", Absent.NO_SUCH_INSTANCE),
    (b"\x82\x00", Absent.END_OF_MIB),
]


def response(varbinds: list[tuple[m.OID, bytes]], *, version: int = ber.VERSION_2C, community: bytes = b"public",
             request_id: int = 0x1234567, status: int = 0, index: int = 0, pdu_tag: int = ber.RESPONSE) -> bytes:
    return ber.encode_message(version, community, pdu_tag, request_id, status, index, varbinds)


def pysnmp_decode(msg: bytes, version: int = ber.VERSION_2C) -> tuple[int, int, int, list[tuple[m.OID, m.Raw]]]:
    """The library's reading of a message as the pysnmp codec of client.py gets it: pyasn1 decodes it, an
    SNMPv1 PDU is translated to v2c (RFC 2576, as pysnmp's v1 message processing does), to_raw converts."""
    pm = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C if version else api.SNMP_VERSION_1]
    message, rest = pyasn1_decoder.decode(msg, asn1Spec=pm.Message())
    assert not rest
    pdu = pm.apiMessage.get_pdu(message)
    if version == ber.VERSION_1:
        pdu = rfc2576.v1_to_v2(pdu, api.v2c.GetRequestPDU())
    v2 = api.v2c.apiPDU
    rows = [(tuple(int(x) for x in n), to_raw(v)) for n, v in v2.get_varbinds(pdu)]
    return int(v2.get_request_id(pdu)), int(v2.get_error_status(pdu)), int(v2.get_error_index(pdu)), rows


@pytest.mark.parametrize(("encoded", "raw"), VALUES)
def test_ber_value_round_trip_equals_pysnmp(encoded: bytes, raw: m.Raw) -> None:
    msg = response([(APC_OUTLET_POWER_1, encoded)])
    r = ber.decode_response(msg)
    assert (r.version, r.community, r.request_id, r.error_status, r.error_index) == (1, b"public", 0x1234567, 0, 0)
    assert r.varbinds == [(APC_OUTLET_POWER_1, raw)]
    assert type(r.varbinds[0][1]) is type(raw)  # an int is an int, not a bool or an enum
    assert pysnmp_decode(msg)[3] == r.varbinds  # the library reads the same message the same way


def test_ber_whole_response_equals_pysnmp_in_v1_and_v2c() -> None:
    v1_values = [(e, r) for e, r in VALUES if e[0] not in (ber.COUNTER64, 0x80, 0x81, 0x82)]
    for version, values in ((ber.VERSION_2C, VALUES), (ber.VERSION_1, v1_values)):
        vbs = [((*APC_OUTLET_POWER_1[:-1], i), e) for i, (e, _r) in enumerate(values, 1)]
        msg = response(vbs, version=version, status=5, index=3)
        r = ber.decode_response(msg)
        assert [v for _o, v in r.varbinds] == [raw for _e, raw in values]
        assert pysnmp_decode(msg, version) == (r.request_id, r.error_status, r.error_index, r.varbinds)
        assert (r.version, r.error_status, r.error_index) == (version, 5, 3)


def test_ber_decodes_what_pysnmp_encodes() -> None:
    """The other direction: a response built and encoded by pysnmp/pyasn1 decodes to to_raw of its values."""
    pm = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    values = [rfc1902.Integer32(-5), rfc1902.Integer32(2**31 - 1), rfc1902.Gauge32(2**32 - 1),
              rfc1902.Counter32(12345), rfc1902.Counter64(2**64 - 1), rfc1902.TimeTicks(42),
              rfc1902.OctetString(b"AP8641"), rfc1902.OctetString(b"\x00\x01"), rfc1902.IpAddress("192.0.2.7"),
              rfc1902.Opaque(b"\x9f\x78\x04"), rfc1902.ObjectIdentifier("1.3.6.1.4.1.318.1.3.4.6"),
              rfc1905.NoSuchObject(""), rfc1905.NoSuchInstance(""), rfc1905.EndOfMibView(""),
              rfc1902.Unsigned32(7), rfc1902.Null("")]
    pdu = pm.ResponsePDU()
    pm.apiPDU.set_defaults(pdu)
    pm.apiPDU.set_request_id(pdu, 99999999)
    names = [(*APC_OUTLET_POWER_1[:-1], i) for i in range(1, len(values) + 1)]
    pm.apiPDU.set_varbinds(pdu, list(zip([rfc1902.ObjectName(n) for n in names], values, strict=True)))
    msg = pm.Message()
    pm.apiMessage.set_defaults(msg)
    pm.apiMessage.set_community(msg, "s3cret")
    pm.apiMessage.set_pdu(msg, pdu)
    r = ber.decode_response(pyasn1_encoder.encode(msg))
    assert (r.community, r.request_id) == (b"s3cret", 99999999)
    assert r.varbinds == [(n, to_raw(v)) for n, v in zip(names, values, strict=True)]


@pytest.mark.parametrize(("pdu_tag", "bulk"), [(ber.GET_REQUEST, (0, 0)), (ber.GET_NEXT_REQUEST, (0, 0)),
                                                (ber.GET_BULK_REQUEST, (1, 25))])
def test_ber_request_template_is_what_pysnmp_reads(pdu_tag: int, bulk: tuple[int, int]) -> None:
    oids = [APC_OUTLET_POWER_1, m.SYS_OBJECT_ID, (1, 3, 6, 1, 4, 1, 2**32 - 1)]
    t = ber.RequestTemplate(ber.VERSION_2C, b"pdu-a01", oids, pdu_tag, *bulk)
    pm = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    for rid in (ber.REQUEST_ID_MIN, 0x12345678, ber.REQUEST_ID_MAX):
        packet = t.packet(rid)
        msg, rest = pyasn1_decoder.decode(packet, asn1Spec=pm.Message())
        assert not rest and pyasn1_encoder.encode(msg) == packet  # minimal (DER-like) encoding throughout
        pdu = pm.apiMessage.get_pdu(msg)
        assert bytes(pm.apiMessage.get_community(msg)) == b"pdu-a01" and int(pm.apiMessage.get_version(msg)) == 1
        assert pdu.tagSet[0][2] == pdu_tag & 0x1F and int(pm.apiPDU.get_request_id(pdu)) == rid
        assert [(tuple(n), type(v).__name__) for n, v in pm.apiPDU.get_varbinds(pdu)] == [(o, "Null") for o in oids]
        if pdu_tag == ber.GET_BULK_REQUEST:
            assert (int(pm.apiBulkPDU.get_non_repeaters(pdu)), int(pm.apiBulkPDU.get_max_repetitions(pdu))) == bulk
        else:
            assert (int(pm.apiPDU.get_error_status(pdu)), int(pm.apiPDU.get_error_index(pdu))) == (0, 0)
    v1 = ber.RequestTemplate(ber.VERSION_1, b"public", oids)
    msg1, _ = pyasn1_decoder.decode(v1.packet(ber.REQUEST_ID_MIN), asn1Spec=api.PROTOCOL_MODULES[0].Message())
    assert int(api.PROTOCOL_MODULES[0].apiMessage.get_version(msg1)) == 0
    with pytest.raises(ValueError, match="request-id"):
        t.packet(ber.REQUEST_ID_MIN - 1)
    with pytest.raises(ValueError, match="GETBULK"):
        ber.RequestTemplate(ber.VERSION_1, b"public", oids, ber.GET_BULK_REQUEST, 0, 10)


def test_ber_long_form_lengths_are_accepted() -> None:
    """BER allows a long-form length where a short one would do (some agents always send 0x82 xx xx)."""
    name = ber.encode_oid(APC_OUTLET_POWER_1)
    value = b"\x02\x81\x01\x07"  # INTEGER, length 1 in long form, 7
    vb = b"\x30\x82\x00" + bytes([len(name) + len(value)]) + name + value
    pdu = ber.encode_integer(77777777) + b"\x02\x01\x00\x02\x01\x00" + ber.encode_tlv(ber.SEQUENCE, vb)
    msg = ber.encode_tlv(ber.SEQUENCE, b"\x02\x01\x01" + ber.encode_tlv(ber.OCTET_STRING, b"public")
                         + ber.encode_tlv(ber.RESPONSE, pdu))
    assert ber.decode_response(msg).varbinds == [(APC_OUTLET_POWER_1, 7)]


def big_response() -> bytes:
    return response([((*APC_OUTLET_POWER_1[:-1], i), e) for i, (e, _r) in enumerate(VALUES, 1)])


def test_ber_truncation_at_every_byte_is_a_ber_error() -> None:
    msg = big_response()
    for k in range(len(msg)):
        with pytest.raises(ber.BerError):
            ber.decode_response(msg[:k])
    with pytest.raises(ber.BerError, match="1 bytes after the end of the message"):
        ber.decode_response(msg + b"\x00")
    assert ber.decode_response(msg).varbinds  # the whole message is fine


def test_ber_header_of_a_truncated_answer_still_names_its_request() -> None:
    msg = big_response()
    head = ber.decode_header(msg[:40])
    assert (head.version, head.community, head.pdu_tag, head.request_id) == (1, b"public", ber.RESPONSE, 0x1234567)
    for k in range(16):  # cut before the request-id ends: no header
        with pytest.raises(ber.BerError):
            ber.decode_header(msg[:k])


def at(b: bytes, i: int, value: int) -> bytes:
    return b[:i] + bytes([value]) + b[i + 1:]


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda b: b"\x31" + b[1:], "message: expected tag 0x30, got 0x31"),
    (lambda b: b.replace(b"\xa2", b"\xa0", 1), r"PDU tag 0xa0 is not a Response"),
    (lambda b: b.replace(b"\x04\x06public", b"\x05\x06public", 1), "community: expected tag 0x04"),
    (lambda b: b.replace(b"\x02\x01\x01\x04", b"\x02\x01\x03\x04", 1), r"version field 3 is neither"),
    (lambda b: b.replace(b"\x02\x01\x01\x04", b"\x0a\x01\x01\x04", 1), "version: expected tag 0x02, got 0x0a"),
    (lambda b: b.replace(bytes([ber.COUNTER32, 1, 7]), bytes([0x47, 1, 7]), 1), "varbind 1: unknown value tag 0x47"),
    (lambda b: b.replace(bytes([ber.COUNTER32, 1, 7]), bytes([0x24, 1, 7]), 1), "unknown value tag 0x24"),
    (lambda b: at(b, b.index(ber.encode_oid(APC_OUTLET_POWER_1)) - 2, 0x31), "varbind 1: varbind: expected tag 0x30"),
    (lambda b: at(b, b.index(ber.encode_oid(APC_OUTLET_POWER_1)), 0x04), "varbind 1: name: expected tag 0x06"),
    (lambda b: at(b, b.index(b"\xa2") + 1, b[b.index(b"\xa2") + 1] - 1), "1 bytes after the PDU"),
    (lambda b: b.replace(bytes([ber.COUNTER32, 1, 7]), bytes([ber.COUNTER32, 0x80, 7]), 1), "indefinite length"),
    (lambda b: b.replace(bytes([ber.COUNTER32, 1, 7]), bytes([ber.COUNTER32, 0x85, 7]), 1), "length of 5 octets"),
])
def test_ber_wrong_tags_and_lengths(mutate: Any, reason: str) -> None:
    msg = response([(APC_OUTLET_POWER_1, ber.encode_integer(7, ber.COUNTER32))])
    bad = mutate(msg)
    assert bad != msg
    with pytest.raises(ber.BerError, match=reason):
        ber.decode_response(bad)


@pytest.mark.parametrize(("value", "version", "reason"), [
    (b"\x02\x00", 1, "Integer32 with no content octets"),
    (b"\x46\x00", 1, "Counter64 with no content octets"),
    (b"\x05\x01\x00", 1, "NULL with 1 content octets"),
    (b"\x81\x01\x00", 1, "noSuchInstance with 1 content octets"),
    (b"\x06\x00", 1, "OBJECT IDENTIFIER with no content octets"),
    (b"\x06\x03\x2b\x06\x81", 1, "OBJECT IDENTIFIER ends inside a sub-identifier"),
    (b"\x06\x03\x2b\x80\x01", 1, r"OBJECT IDENTIFIER sub-identifier with a leading 0x80 \(not minimal\)"),
    (ber.encode_integer(5, ber.COUNTER64), 0, "Counter64 in an SNMPv1 message"),
    (b"\x80\x00", 0, "noSuchObject in an SNMPv1 message"),
    (b"\x82\x00", 0, "endOfMibView in an SNMPv1 message"),
])
def test_ber_malformed_values(value: bytes, version: int, reason: str) -> None:
    with pytest.raises(ber.BerError, match=f"varbind 1: {reason}"):
        ber.decode_response(response([(APC_OUTLET_POWER_1, value)], version=version))


def test_ber_bad_name_oid_and_empty_request_id() -> None:
    vb = ber.encode_tlv(ber.SEQUENCE, b"\x06\x02\x2b\x80" + b"\x05\x00")
    pdu = ber.encode_integer(1 << 24) + b"\x02\x01\x00\x02\x01\x00" + ber.encode_tlv(ber.SEQUENCE, vb)
    msg = ber.encode_tlv(ber.SEQUENCE, b"\x02\x01\x01\x04\x00" + ber.encode_tlv(ber.RESPONSE, pdu))
    with pytest.raises(ber.BerError, match="varbind 1: OBJECT IDENTIFIER ends inside a sub-identifier"):
        ber.decode_response(msg)
    pdu = b"\x02\x00" + b"\x02\x01\x00\x02\x01\x00\x30\x00"
    msg = ber.encode_tlv(ber.SEQUENCE, b"\x02\x01\x01\x04\x00" + ber.encode_tlv(ber.RESPONSE, pdu))
    with pytest.raises(ber.BerError, match="request-id: INTEGER with no content octets"):
        ber.decode_response(msg)
    with pytest.raises(ber.BerError, match="empty datagram"):
        ber.decode_response(b"")


@pytest.mark.parametrize(("value", "raw"), [
    (ber.encode_integer(2**31), Junk("Integer32", "2147483648 (outside -2147483648..2147483647)")),
    (ber.encode_integer(-(2**31) - 1), Junk("Integer32", "-2147483649 (outside -2147483648..2147483647)")),
    (ber.encode_tlv(ber.GAUGE32, b"\xff\xff\xff\xff"), Junk("Gauge32", "-1 (outside 0..4294967295)")),  # sign bit
    (ber.encode_integer(2**32, ber.COUNTER32), Junk("Counter32", "4294967296 (outside 0..4294967295)")),
    (ber.encode_integer(2**64, ber.COUNTER64), Junk("Counter64", f"{2**64} (outside 0..{2**64 - 1})")),
    (ber.encode_integer(-1, ber.TIME_TICKS), Junk("TimeTicks", "-1 (outside 0..4294967295)")),
    (ber.encode_integer(2**200), Junk("Integer32", "a 201-bit number (outside -2147483648..2147483647)")),
    (ber.encode_tlv(ber.IP_ADDRESS, b"\x0a\x00\x00"), Junk("IpAddress", "3 octets 0x0a0000 (an address has 4)")),
    (b"\x02\x03\x00\x00\x07", 7),  # a non-minimal INTEGER still reads (as pyasn1 reads it)
])
def test_ber_values_outside_their_range_are_junk_not_errors(value: bytes, raw: m.Raw) -> None:
    """Well-framed but outside the SMI range: only that reading is bad (NaN + a logged problem)."""
    [(_name, got)] = ber.decode_response(response([(APC_OUTLET_POWER_1, value)])).varbinds
    assert got == raw
    if isinstance(raw, Junk):
        assert math.isnan(m.scaled(point(m.RPDU2_OUTLET_POWER, "outlet"), got)[0])


def test_ber_random_corruption_only_ever_raises_ber_error() -> None:
    rng = random.Random(1)
    msg = bytearray(big_response())
    for _ in range(3000):
        bad = bytearray(msg)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        cut = rng.randrange(len(bad) + 1) if rng.random() < 0.3 else len(bad)
        try:
            ber.decode_response(bytes(bad[:cut]))
        except ber.BerError:
            pass
        try:
            ber.decode_header(bytes(bad[:cut]))
        except ber.BerError:
            pass


def test_ber_oid_cache_is_bounded_and_returns_the_same_arcs() -> None:
    content = ber.encode_oid_content(APC_OUTLET_POWER_1)
    assert ber.decode_oid(content) == APC_OUTLET_POWER_1 == ber.decode_oid(content)
    for i in range(ber._MAX_OID_CACHE + 10):
        ber.decode_oid(ber.encode_oid_content((1, 3, 6, 1, i)))
    assert len(ber._oid_cache) <= ber._MAX_OID_CACHE
    assert ber.decode_oid(content) == APC_OUTLET_POWER_1
