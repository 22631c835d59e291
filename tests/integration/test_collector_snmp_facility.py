"""The `snmp` source's facility models and SNMPv3 against a real agent: snmpsim serving recordings of real
devices (the Eaton 9PX UPS shipped with snmpsim, the Tripp Lite PowerAlert transfer switch and the Geist
Watchdog sensor of snmpsim-data), over v2c and over SNMPv3 authPriv.

Every figure is compared for equality with the recording, parsed here with the OIDs and scales spelled out
from the MIB texts, independently of the collector's tables. The Geist recording varies its temperatures
(snmpsim's `numeric` variation module): the equality test serves a copy with each varying value fixed at
its recorded initial value, and a second test reads the varying device within its recorded bounds. No
Kafka: these tests need only the loopback interface.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.base import SourceError, load_source
from collectors.scheduler import Scheduler
from collectors.snmp.source import SnmpSource
from powerplane.schemas import FacilityReading, TelemetryFrame
from tests.integration.snmp_server import SnmpSim, V3User, parse_snmprec, read_recording, snmpsim_data

AUTH_KEY, PRIV_KEY = "auth-key-for-tests", "priv-key-for-tests"
USER = V3User("pp", AUTH_KEY, PRIV_KEY, auth_proto="SHA256", priv_proto="AES")


def snmpsim_recording(relative: str) -> Path:
    """A recording shipped inside the snmpsim package itself (data/recorded/...)."""
    spec = importlib.util.find_spec("snmpsim")
    assert spec is not None and spec.origin is not None, "snmpsim is not installed"
    return Path(spec.origin).resolve().parent / "data" / relative


RECORDINGS: dict[str, Path] = {
    "eaton-9px": snmpsim_recording("recorded/eaton-9PX-partial-walk.snmprec"),
    "tripplite": snmpsim_data("network/appliance/tripplite-poweralert.snmprec"),
    "geist-live": snmpsim_data("iot/geist-temperature-sensor.snmprec"),
    "ap8641": snmpsim_data("UPS/apc-8641.snmprec"),
}
_NUMERIC = re.compile(r"^([0-9.]+)\|(\d+):numeric\|(.*)$")


def fixed(text: str) -> str:
    """A recording with every `numeric` variation replaced by its recorded initial value."""
    out = []
    for line in text.splitlines():
        m = _NUMERIC.match(line)
        if m:
            params = dict(p.split("=", 1) for p in m.group(3).split(","))
            line = f"{m.group(1)}|{m.group(2)}|{params['initial']}"
        out.append(line)
    return "\n".join(out) + "\n"


# A UPS-MIB agent on battery with two alarms (RFC 1628 objects, hand-written: no recording has them).
UPS_MIB_ON_BATTERY = "\n".join([
    "1.3.6.1.2.1.1.2.0|6|1.3.6.1.4.1.534.1",
    "1.3.6.1.2.1.33.1.2.3.0|2|7", "1.3.6.1.2.1.33.1.2.4.0|2|96",
    "1.3.6.1.2.1.33.1.3.3.1.2.1|66|0", "1.3.6.1.2.1.33.1.3.3.1.2.2|66|0", "1.3.6.1.2.1.33.1.3.3.1.2.3|66|0",
    "1.3.6.1.2.1.33.1.3.3.1.3.1|66|0", "1.3.6.1.2.1.33.1.3.3.1.3.2|66|0", "1.3.6.1.2.1.33.1.3.3.1.3.3|66|0",
    "1.3.6.1.2.1.33.1.4.1.0|2|5",
    "1.3.6.1.2.1.33.1.4.4.1.4.1|66|41000", "1.3.6.1.2.1.33.1.4.4.1.4.2|66|39500",
    "1.3.6.1.2.1.33.1.4.4.1.5.1|66|82", "1.3.6.1.2.1.33.1.4.4.1.5.2|66|79",
    "1.3.6.1.2.1.33.1.6.1.0|66|2",
    "1.3.6.1.2.1.33.1.6.2.1.2.1|6|1.3.6.1.2.1.33.1.6.3.2", "1.3.6.1.2.1.33.1.6.2.1.2.2|6|1.3.6.1.2.1.33.1.6.3.6",
]) + "\n"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnmpSim]:
    recs: dict[str, Path | str] = dict(RECORDINGS)
    recs["geist"] = fixed(read_recording(RECORDINGS["geist-live"]))
    recs["ups-on-battery"] = UPS_MIB_ON_BATTERY
    with SnmpSim(recs, tmp_path_factory.mktemp("snmpsim-facility"), v3_user=USER) as server:
        yield server


class Rec:
    def __init__(self, text: str) -> None:
        self.rows = parse_snmprec(text)

    def int(self, oid: str) -> int:
        t, v = self.rows[oid]
        assert t in ("2", "65", "66"), (oid, t)
        return int(v)

    def column(self, col: str) -> dict[str, str]:
        return {k[len(col) + 1:]: v for k, (_t, v) in self.rows.items() if k.startswith(col + ".")}


def rec(name: str) -> Rec:
    return Rec(read_recording(RECORDINGS[name]))


def make(sim: SnmpSim, community: str, **kw: Any) -> SnmpSource:
    opts = {"kind": "snmp", "host": sim.host, "port": sim.port, "community": community, "site": "lab",
            "timeout_s": 4.0, **kw}
    s = load_source(f"src-{community}", opts)
    assert isinstance(s, SnmpSource)
    return s


def v3(community: str, **kw: Any) -> dict[str, Any]:
    return {"version": "3", "user": "pp", "auth_protocol": "SHA-256", "priv_protocol": "AES-128",
            "auth_key_env": "PP_TEST_V3_AUTH", "priv_key_env": "PP_TEST_V3_PRIV", "context": community, **kw}


@pytest.fixture(autouse=True)
def v3_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_TEST_V3_AUTH", AUTH_KEY)
    monkeypatch.setenv("PP_TEST_V3_PRIV", PRIV_KEY)
    monkeypatch.setenv("PP_TEST_V3_WRONG", "not-the-right-key")


async def read_once(s: SnmpSource) -> Any:
    await s.start()
    try:
        [r] = await s.read()
        return r
    finally:
        await s.close()


def facility(s: SnmpSource) -> FacilityReading:
    r = asyncio.run(read_once(s))
    assert isinstance(r, FacilityReading)
    return FacilityReading.decode(r.encode())  # what the wire carries, with the schema's checks


# ---- the recorded devices decode to their walks --------------------------------------------------------------
X = "1.3.6.1.4.1.534.1"


@pytest.mark.parametrize("version", ["2c", "3"])
def test_eaton_9px_ups_reads_as_a_ups_equal_to_its_walk(sim: SnmpSim, version: str) -> None:
    w = rec("eaton-9px")
    extra = v3("eaton-9px") if version == "3" else {}
    r = facility(make(sim, "eaton-9px", model="eaton-ups", lineup="ups-a", feed="A", **extra))
    in_v = w.column(f"{X}.3.4.1.2")  # xupsInputVoltage, V
    assert r.input_voltage_v == [float(v) for v in in_v.values()] == [243.0]
    assert r.input_frequency_hz == [w.int(f"{X}.3.1.0") / 10] * len(in_v) == [50.0]  # xupsInputFrequency, 0.1 Hz
    assert r.output_load_pct == [float(w.int(f"{X}.4.1.0"))] == [9.0]  # xupsOutputLoad, %
    assert r.output_power_w == [float(v) for v in w.column(f"{X}.4.4.1.4").values()] == [50.0]  # xupsOutputWatts
    assert w.int(f"{X}.4.5.0") == 3 and r.output_source == "normal"  # xupsOutputSource normal(3)
    assert (r.on_battery, r.on_bypass) == (False, False)
    assert r.battery_remaining_s == float(w.int(f"{X}.2.1.0")) == 17218.0  # xupsBatTimeRemaining, s
    assert r.battery_charge_pct == float(w.int(f"{X}.2.4.0")) == 100.0  # xupsBatCapacity, %
    assert r.alarms == w.int(f"{X}.7.1.0") == 0 and r.alarm_kinds == []
    assert (r.kind, r.unit, r.lineup, r.feed) == ("ups", "ups-a", "ups-a", "A")


def test_the_eaton_meter_model_still_reads_the_9px_as_a_pdu_meter(sim: SnmpSim) -> None:
    s = make(sim, "eaton-9px", model="eaton", rack="rack-01", feed="B")
    f = asyncio.run(read_once(s))
    assert isinstance(f, TelemetryFrame)
    assert math.isnan(f.pdu_power_w[0]) and f.pdu_power_w[1] == 50.0 and f.inlet_c == [24.0]


ATS = "1.3.6.1.4.1.850.1.1.3.4.3"


def test_tripplite_transfer_switch_reads_both_input_lines_and_its_alarms_equal_to_its_walk(sim: SnmpSim) -> None:
    w = rec("tripplite")
    r = facility(make(sim, "tripplite", model="tripplite-ats", rack="rack-01"))
    line = w.column(f"{ATS}.1.2.1.1")  # tlpAtsInputLineIndex
    rows = sorted(line, key=lambda i: int(line[i]))
    assert r.input_voltage_v == [int(w.column(f"{ATS}.1.2.1.5")[i]) / 10 for i in rows] == [115.2, 115.1]  # 0.1 V
    assert r.input_frequency_hz == [int(w.column(f"{ATS}.1.2.1.4")[i]) / 10 for i in rows] == [59.9, 59.9]
    kw = w.column(f"{ATS}.2.1.1.13")  # tlpAtsOutputCalculatedPowerKW, 0.01 kW
    assert r.output_power_w == [int(v) * 10.0 for v in kw.values()] == [0.0]
    assert r.alarms == w.int("1.3.6.1.4.1.850.1.3.1.0") == 11  # tlpAlarmsPresent
    descr = w.column("1.3.6.1.4.1.850.1.3.2.1.2")  # tlpAlarmDescr: loads off (ATS well-known .6.8.n / .6.11)
    assert all(d.startswith(("1.3.6.1.4.1.850.1.3.3.6.8.", "1.3.6.1.4.1.850.1.3.3.6.11")) for d in descr.values())
    assert r.alarm_kinds == ["outlet_off"]
    assert (r.kind, r.unit, r.rack, r.output_source, r.on_battery) == ("ats", "rack-01", "rack-01", None, None)


G = "1.3.6.1.4.1.21239.5.1"
PROBES = {"internal.1": "rack-01", "temp.2": "rack-02", "temp.3": "rack-03"}


def test_geist_probes_read_as_rack_inlets_equal_to_the_walk(sim: SnmpSim) -> None:
    w = Rec(fixed(read_recording(RECORDINGS["geist-live"])))
    r = facility(make(sim, "geist", model="geist", probes=PROBES))
    assert w.int(f"{G}.1.7.0") == 1  # productTempUnits celsius(1)
    expected = [w.int(f"{G}.2.1.5.1") / 10, w.int(f"{G}.4.1.5.2") / 10, w.int(f"{G}.4.1.5.3") / 10]  # 0.1 degree
    assert r.inlet_c == expected == [15.4, 18.5, 18.0]
    assert (r.kind, r.unit, r.racks) == ("env", "src-geist", ["rack-01", "rack-02", "rack-03"])


def test_the_live_geist_recording_varies_within_its_recorded_bounds(sim: SnmpSim) -> None:
    r = facility(make(sim, "geist-live", model="geist", probes=PROBES))
    assert r.inlet_c is not None and all(10.0 <= t <= 30.0 for t in r.inlet_c)  # numeric min=100, max=300


def test_a_ups_mib_unit_on_battery_lists_its_alarm_kinds(sim: SnmpSim) -> None:
    r = facility(make(sim, "ups-on-battery", model="ups-mib", lineup="ups-b", feed="B"))
    assert (r.output_source, r.on_battery, r.on_bypass) == ("battery", True, False)
    assert r.battery_remaining_s == 420.0 and r.battery_charge_pct == 96.0  # 7 minutes
    assert r.input_voltage_v == [0.0, 0.0, 0.0] and r.input_frequency_hz == [0.0, 0.0, 0.0]
    assert r.output_power_w == [41000.0, 39500.0] and r.output_load_pct == [82.0, 79.0]
    assert r.alarms == 2 and r.alarm_kinds == ["input_bad", "on_battery"]


# ---- SNMPv3 -------------------------------------------------------------------------------------------------
def test_a_pdu_reads_the_same_frame_over_snmpv3_authpriv_as_over_v2c(sim: SnmpSim) -> None:
    frames = [asyncio.run(read_once(make(sim, "ap8641", rack="rack-01", feed="A", **kw)))
              for kw in ({}, v3("ap8641"))]
    same = [dataclasses.replace(f, ts_s=0.0, source="") for f in frames]
    assert same[0].encode() == same[1].encode()  # every reading, NaN where the recording has none
    assert not math.isnan(frames[1].pdu_power_w[0]) and frames[1].pdu_outlet_power_w is not None


@pytest.mark.parametrize(("kw", "why"), [
    ({"user": "nobody"}, "SNMPv3 user 'nobody' is unknown to the agent (wrong user name?)"),
    ({"auth_key_env": "PP_TEST_V3_WRONG"},
     "SNMPv3 authentication failed for user 'pp' (wrong auth key or auth protocol?)"),
    ({"auth_protocol": "SHA"}, "SNMPv3 authentication failed for user 'pp' (wrong auth key or auth protocol?)"),
    ({"priv_key_env": "PP_TEST_V3_WRONG"},
     "SNMPv3 decryption failed for user 'pp' (wrong priv key or priv protocol?)"),
])
def test_a_wrong_v3_credential_is_one_line_naming_the_source(sim: SnmpSim, caplog: pytest.LogCaptureFixture,
                                                             kw: dict[str, str], why: str) -> None:
    s = make(sim, "eaton-9px", model="eaton-ups", lineup="ups-a", **v3("eaton-9px", **kw))
    with pytest.raises(SourceError) as e:
        asyncio.run(read_once(s))
    assert str(e.value) == f"snmp {sim.host}:{sim.port}: {why}"
    caplog.set_level(logging.WARNING, "powerplane.collectors")
    sched = Scheduler([s], lambda _r: None)

    async def poll() -> None:
        await s.start()
        try:
            await sched._poll(s, sched.status[s.name])
        finally:
            await s.close()

    asyncio.run(poll())
    lines = [r.getMessage() for r in caplog.records if r.name == "powerplane.collectors"]
    assert lines == [f"source src-eaton-9px (snmp): snmp {sim.host}:{sim.port}: {why}"]
