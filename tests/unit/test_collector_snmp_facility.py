"""The SNMP collector's facility side without an agent: UPS, transfer-switch and sensor plans and scaling,
alarm kinds, the SNMPv3 options (keys from a file or the environment, every mistake at once), and the
receiver's plausibility checks of facility readings."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from collectors.base import SourceConfigError, SourceContext, load_source
from collectors.snmp import facility as fm
from collectors.snmp import models
from collectors.snmp.models import OID, Absent
from collectors.snmp.source import SnmpSource
from collectors.snmp.v3 import read_secret
from powerplane.facility_checks import FacilityChecker
from powerplane.schemas import FacilityReading, SchemaError
from powerplane.site_file import load_site

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")
NOW = 1_790_000_000.0
NAN = math.nan


def walked(*cols: tuple[fm.Col, dict[OID, object]]) -> dict[OID, dict[OID, object]]:
    return {c.oid: dict(rows) for c, rows in cols}


def answers(plan: fm.FacilityPlan, values: dict[str, int | Absent]) -> dict[OID, object]:
    """GET answers by point label."""
    return {p.oid: values[p.label] for p in plan.points if p.label in values}


# ---- plans and scaling -------------------------------------------------------------------------------------
def test_ups_mib_reads_each_input_and_output_line_with_minutes_as_seconds() -> None:
    w = walked((fm.UPS_IN_V, {(1,): 0, (2,): 0, (3,): 0}), (fm.UPS_IN_HZ, {(1,): 0, (2,): 0, (3,): 0}),
               (fm.UPS_OUT_W, {(1,): 0, (2,): 0}), (fm.UPS_OUT_LOAD, {(1,): 0, (2,): 0}),
               (fm.UPS_OUT_SOURCE, {(0,): 0}), (fm.UPS_MINUTES, {(0,): 0}), (fm.UPS_CHARGE, {(0,): 0}),
               (fm.UPS_ALARMS, {(0,): 0}))
    plan = fm.make_plan("ups-mib", w)
    assert (plan.n_in, plan.n_out, plan.n_load, plan.notes) == (3, 2, 2, ())
    v = fm.convert(plan, answers(plan, {
        "upsInputVoltage.1": 230, "upsInputVoltage.2": 231, "upsInputVoltage.3": 0, "upsInputFrequency.1": 500,
        "upsInputFrequency.2": 499, "upsInputFrequency.3": 0, "upsOutputPower.1": 41000, "upsOutputPower.2": 39000,
        "upsOutputPercentLoad.1": 82, "upsOutputPercentLoad.2": 78, "upsOutputSource.0": 5,
        "upsEstimatedMinutesRemaining.0": 7, "upsEstimatedChargeRemaining.0": 96, "upsAlarmsPresent.0": 2}))
    assert v.input_voltage_v == [230.0, 231.0, 0.0] and v.input_frequency_hz == [50.0, 49.9, 0.0]
    assert v.output_power_w == [41000.0, 39000.0] and v.output_load_pct == [82.0, 78.0]
    assert (v.output_source, v.battery_remaining_s, v.battery_charge_pct, v.alarms) == ("battery", 420.0, 96.0, 2)
    assert not v.problems


def test_xups_frequency_is_every_phase_s_and_load_is_one_value_and_the_meter_model_is_unchanged() -> None:
    w = walked((fm.XUPS_IN_V, {(1,): 0, (2,): 0, (3,): 0}), (fm.XUPS_IN_HZ, {(0,): 0}),
               (fm.XUPS_OUT_W, {(1,): 0, (2,): 0, (3,): 0}), (fm.XUPS_OUT_LOAD, {(0,): 0}),
               (fm.XUPS_OUT_SOURCE, {(0,): 0}), (fm.XUPS_BAT_S, {(0,): 0}), (fm.XUPS_BAT_PCT, {(0,): 0}))
    plan = fm.make_plan("eaton-ups", w)
    assert plan.notes == ("xupsAlarms.0 not served",)
    v = fm.convert(plan, answers(plan, {
        "xupsInputVoltage.1": 277, "xupsInputVoltage.2": 276, "xupsInputVoltage.3": 278, "xupsInputFrequency.0": 600,
        "xupsOutputWatts.1": 1, "xupsOutputWatts.2": 2, "xupsOutputWatts.3": Absent.NO_SUCH_INSTANCE,
        "xupsOutputLoad.0": 40, "xupsOutputSource.0": 4, "xupsBatTimeRemaining.0": 900, "xupsBatCapacity.0": 88}))
    assert v.input_frequency_hz == [60.0, 60.0, 60.0] and v.output_load_pct == [40.0]
    assert v.output_power_w[:2] == [1.0, 2.0] and math.isnan(v.output_power_w[2])  # NaN, never 0
    assert v.output_source == "bypass" and v.alarms is None and v.gone
    assert [p.message for p in v.problems] == [
        "1.3.6.1.4.1.534.1.4.4.1.4.3 (xupsOutputWatts.3) answered noSuchInstance"]
    assert "eaton" in models.MODELS and "eaton" not in fm.FACILITY_MODELS  # the meter model stays models.py's


def test_transfer_switch_lines_are_ordered_by_their_line_column_not_the_index() -> None:
    rows = {(1, 1, 1): 0, (1, 1, 2): 0}  # as the PowerAlert recording indexes them
    w = walked((fm.ATS_IN_LINE, {(1, 1, 1): 2, (1, 1, 2): 1}), (fm.ATS_IN_PHASE, {(1, 1, 1): 1, (1, 1, 2): 1}),
               (fm.ATS_IN_V, rows), (fm.ATS_IN_HZ, rows), (fm.ATS_OUT_KW, {(1, 1): 0}), (fm.TLP_ALARMS, {(0,): 0}))
    plan = fm.make_plan("tripplite-ats", w)
    v = fm.convert(plan, answers(plan, {
        "tlpAtsInputPhaseVoltage.1.1.1": 1200, "tlpAtsInputPhaseVoltage.1.1.2": 1152,
        "tlpAtsInputPhaseFrequency.1.1.1": 0, "tlpAtsInputPhaseFrequency.1.1.2": 599,
        "tlpAtsOutputCalculatedPowerKW.1.1": 123, "tlpAlarmsPresent.0": 1}))
    assert v.input_voltage_v == [115.2, 120.0]  # line 1 (the primary source) first
    assert v.input_frequency_hz == [59.9, 0.0] and v.output_power_w == [1230.0] and v.alarms == 1


def test_geist_probes_map_to_racks_fahrenheit_is_converted_and_an_absent_probe_is_nan() -> None:
    w = walked((fm.GEIST_UNITS, {(0,): 0}), (fm.GEIST_INTERNAL_AVAIL, {(1,): 1}), (fm.GEIST_INTERNAL_TEMP, {(1,): 0}),
               (fm.GEIST_PROBE_AVAIL, {(2,): 1, (3,): 0}), (fm.GEIST_PROBE_TEMP, {(2,): 0, (3,): 0}))
    plan = fm.make_plan("geist", w, probes={"temp.2": "rack-02", "internal.1": "rack-01", "temp.3": "rack-03",
                                            "temp.9": "rack-04"})
    assert plan.racks == ("rack-02", "rack-01", "rack-03", "rack-04") and plan.fahrenheit
    assert plan.notes == ("probe temp.3 (tempSensorTemp.3) is not available (reported as NaN)",
                          "tempSensorTemp.9 not served (reported as NaN)")
    v = fm.convert(plan, answers(plan, {"tempSensorTemp.2": 770, "internalTemp.1": 680}))
    assert v.inlet_c[:2] == pytest.approx([25.0, 20.0]) and all(math.isnan(x) for x in v.inlet_c[2:])


def test_alarm_kinds_come_from_the_well_known_alarm_oids() -> None:
    o = fm.oid
    descr = {(1,): o("1.3.6.1.2.1.33.1.6.3.2"), (2,): o("1.3.6.1.2.1.33.1.6.3.6"), (3,): o("1.3.6.1.2.1.33.1.6.3.24"),
             (4,): o("1.3.6.1.4.1.534.1.7.11"), (5,): o("1.3.6.1.4.1.850.1.3.3.6.1.1"),
             (6,): o("1.3.6.1.4.1.850.1.3.3.6.8.12"), (7,): 5}
    assert fm.alarm_kinds(descr) == ["input_bad", "on_battery", "on_bypass", "other", "outlet_off", "source_a_lost"]


# ---- options: SNMPv3 and the facility keys --------------------------------------------------------------
def ups_opts(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"kind": "snmp", "host": "192.0.2.30", "site": "lab", "model": "eaton-ups",
                               "lineup": "ups-a"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def test_a_v3_source_reads_its_keys_from_a_file_and_the_environment(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "auth").write_text("auth-secret-1\n")
    monkeypatch.setenv("PP_TEST_PRIV", "priv-secret-1")
    s = load_source("ups-a", ups_opts(version="3", user="pp", auth_key_file=str(tmp_path / "auth"),
                                      priv_key_env="PP_TEST_PRIV"), SourceContext(site=SITE))
    assert isinstance(s, SnmpSource)
    assert s.codec == "pysnmp" and s.client.v3 is not None
    assert (s.client.v3.auth_key, s.client.v3.priv_key) == ("auth-secret-1", "priv-secret-1")
    assert "secret" not in repr(s.client.v3)  # keys never reach a log line
    assert s.feed == "A"  # the lineup's feed, from the site model


def test_every_v3_and_facility_mistake_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PP_NOT_SET", raising=False)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(SourceConfigError) as e:
        load_source("ups-a", ups_opts(version="3", lineup="ups-c", feed="B", codec="fast", auth_key="inline",
                                      auth_key_file=str(tmp_path / "short"), priv_key_env="PP_NOT_SET",
                                      priv_protocol="AES-512"), SourceContext(site=SITE))
    assert sorted(e.value.errors) == [
        "sources.ups-a.auth_key: unknown key",
        "sources.ups-a.priv_protocol: must be one of 'AES-128', 'AES-192', 'AES-256', 'AES-192-BLUMENTHAL', "
        "'AES-256-BLUMENTHAL', 'DES', '3DES', got 'AES-512'",
    ]  # key errors first; then the rules across keys, all of them:
    with pytest.raises(SourceConfigError) as e:
        load_source("ups-a", ups_opts(version="3", lineup="ups-c", codec="fast",
                                      auth_key_file=str(tmp_path / "short"), priv_key_env="PP_NOT_SET"),
                    SourceContext(site=SITE))
    assert sorted(e.value.errors) == [
        "sources.ups-a.auth_key_file: the key in file " + str(tmp_path / "short") + " is shorter than 8 characters "
        "(RFC 3414)",
        "sources.ups-a.codec: 'fast' speaks SNMP v1/v2c only; SNMPv3 goes through pysnmp (leave codec out)",
        "sources.ups-a.lineup: 'ups-c' is not a UPS lineup of site 'lab' (lineups: ups-a, ups-b)",
        "sources.ups-a.priv_key_env: environment variable PP_NOT_SET is not set",
        "sources.ups-a.user: missing (required for version = \"3\")",
    ]


@pytest.mark.parametrize(("opts", "line"), [
    (ups_opts(lineup=None), "sources.x.lineup: missing (required for model 'eaton-ups')"),
    (ups_opts(lineup="ups-b", feed="A"), "sources.x.feed: lineup 'ups-b' is on feed B, not A"),
    (ups_opts(model="geist", lineup=None), "sources.x.probes: missing (required for model 'geist')"),
    (ups_opts(model="geist", lineup=None, probes={"temp.2": "rack-99"}),
     "sources.x.probes.temp.2: 'rack-99' is not a rack of site 'lab'"),
    (ups_opts(model="geist", lineup=None, probes={"outside": "rack-01"}),
     "sources.x.probes.outside: must name a probe as internal.<n> or temp.<n>"),
    (ups_opts(model="tripplite-ats", lineup=None), "sources.x.rack: missing (required for model 'tripplite-ats')"),
    (ups_opts(user="pp"), 'sources.x.user: only for version = "3"'),
    (ups_opts(version="3", user="pp", auth_key_env="A", auth_key_file="/f", priv_key_env="PATH"),
     "sources.x.auth_key_file: give auth_key_file or auth_key_env, not both"),
    (ups_opts(version="3", user="pp", priv_key_env="PATH"),
     "sources.x.auth_key_file: missing: give auth_key_file or auth_key_env (keys are never written in the config)"),
])
def test_one_mistake_one_line(opts: dict[str, object], line: str) -> None:
    with pytest.raises(SourceConfigError) as e:
        load_source("x", opts, SourceContext(site=SITE))
    assert e.value.errors == [line]


def test_read_secret_strips_the_newline_and_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("0123456789\r\n")
    assert read_secret(str(tmp_path / "k"), None) == ("0123456789", "")
    value, why = read_secret(str(tmp_path / "nope"), None)
    assert value is None and why.startswith("cannot be read (FileNotFoundError")


# ---- the receiver's plausibility checks --------------------------------------------------------------------
def ups_reading(**kw: object) -> FacilityReading:
    base = FacilityReading(site="lab", unit="ups-a", kind="ups", ts_s=NOW, interval_s=10.0, seq=1, source="ups-a",
                           lineup="ups-a", feed="A", input_voltage_v=[230.0, NAN, 0.0],
                           input_frequency_hz=[50.0, NAN, 0.0], output_load_pct=[80.0], output_power_w=[400e3],
                           output_source="normal", on_battery=False, on_bypass=False, battery_remaining_s=600.0,
                           battery_charge_pct=100.0, alarms=0, alarm_kinds=[])
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_a_plausible_reading_is_taken_nan_and_a_dead_input_included() -> None:
    chk = FacilityChecker(SITE)
    v = chk.check(ups_reading(), NOW)
    assert v.reading is not None and chk.counts.accepted == 1
    env = FacilityReading(site="lab", unit="geist-1", kind="env", ts_s=NOW, interval_s=10.0, seq=1,
                          source="geist-1", racks=["rack-01", "rack-02"], inlet_c=[22.5, NAN])
    assert chk.check(env, NOW).reading is env


@pytest.mark.parametrize(("kw", "reason"), [
    ({"input_voltage_v": [700.0]}, "facility.reading ups-a: field 'input_voltage_v'[0] = 700 outside [0, 600]"),
    ({"input_frequency_hz": [50.0, 30.0]},
     "facility.reading ups-a: field 'input_frequency_hz'[1] = 30 is neither 0 (dead input) nor within [40, 70] Hz"),
    ({"output_load_pct": [151.0]}, "facility.reading ups-a: field 'output_load_pct'[0] = 151 outside [0, 150]"),
    ({"output_power_w": [2e6]},
     "facility.reading ups-a: field 'output_power_w'[0] = 2e+06 outside [0, 1.5e+06] (3 x lineup 'ups-a''s rating)"),
    ({"battery_remaining_s": -1.0}, "facility.reading ups-a: field 'battery_remaining_s' = -1 is negative"),
    ({"lineup": "rpp-a1"}, "facility.reading ups-a: field 'lineup' = 'rpp-a1' is not a UPS lineup of site 'lab'"),
    ({"feed": "B"}, "facility.reading ups-a: field 'feed' = 'B', lineup 'ups-a' is on feed A"),
    ({"site": "dc2"}, "facility.reading ups-a: site 'dc2', this worker takes 'lab'"),
    ({"ts_s": NOW + 60}, "facility.reading ups-a: field 'ts_s' = 1790000060.000 is 60.0 s ahead of the receiver's "
                         "clock (at most 5 s)"),
    ({"ts_s": NOW - 2 * 86400}, "facility.reading ups-a: field 'ts_s' = 1789827200.000 is 172800 s old (at most "
                                "86400 s; older is a replay or a broken clock)"),
    ({"kind": "env", "racks": ["rack-01"], "inlet_c": [95.0]},
     "facility.reading ups-a: field 'inlet_c'[0] = 95 outside [-20, 80]"),
    ({"kind": "ats", "rack": "rack-99"}, "facility.reading ups-a: rack 'rack-99' not in site 'lab'"),
])
def test_an_implausible_reading_is_refused_with_one_line(kw: dict[str, object], reason: str) -> None:
    v = FacilityChecker(SITE).check(ups_reading(**kw), NOW)
    assert v.refused and v.reason == reason


def test_a_duplicate_is_dropped_not_refused() -> None:
    chk = FacilityChecker(SITE)
    assert chk.check(ups_reading(seq=5), NOW).reading is not None
    v = chk.check(ups_reading(seq=5), NOW)
    assert v.dropped and not v.refused and chk.counts.duplicates == 1


def test_the_wire_refuses_a_negative_battery_time_and_an_unknown_output_source() -> None:
    with pytest.raises(SchemaError, match="battery_remaining_s' = -5 out of range"):
        FacilityReading.decode(ups_reading(battery_remaining_s=-5.0).encode())
    with pytest.raises(SchemaError, match="output_source' = 'inverter'"):
        FacilityReading.decode(ups_reading(output_source="inverter").encode())


# ---- where readings go, and which engine a v3 source shares ------------------------------------------------
def test_the_publisher_sends_facility_readings_to_pp_facility_and_frames_to_pp_telemetry(tmp_path: Path) -> None:
    from collectors.publisher import SpooledPublisher
    from collectors.spool import Spool
    from powerplane import topics
    from powerplane.kafka import ClientAuth

    spool = Spool(tmp_path / "spool")
    pub = SpooledPublisher("127.0.0.1:1", spool, auth=ClientAuth())
    frame = load_source("pdu", {"kind": "snmp", "host": "192.0.2.1", "site": "lab", "rack": "rack-01",
                                "feed": "A"}).frame("lab", "rack-01")
    pub.publish([ups_reading(), frame])
    recs = spool.read(spool.cursor, 10)
    assert [(r.topic, r.key) for r in recs] == [(topics.FACILITY.name, b"ups-a"), (topics.TELEMETRY.name, b"rack-01")]
    assert FacilityReading.decode(recs[0].value).lineup == "ups-a"
    spool.close()


def test_v3_sources_share_an_engine_only_with_the_same_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from collectors.snmp import client as snmp_client

    monkeypatch.setenv("K1", "key-number-1")
    monkeypatch.setenv("K2", "key-number-2")

    def src(name: str, priv_env: str) -> SnmpSource:
        s = load_source(name, ups_opts(host="127.0.0.1", version="3", user="pp", auth_key_env="K1",
                                       priv_key_env=priv_env))
        assert isinstance(s, SnmpSource)
        return s

    async def engines() -> list[object]:
        clients = [src("a", "K1").client, src("b", "K1").client, src("c", "K2").client]
        for c in clients:
            await c.open()
        got = [c._engine_for_this_loop() for c in clients]
        for c in clients:
            c.close()
        assert snmp_client._Shared.engines == {}
        return got

    a, b, c = asyncio.run(engines())
    assert a is b and a is not c
