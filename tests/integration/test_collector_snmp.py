"""The `snmp` source against a real SNMP agent: snmpsim serving recordings of real devices.

Recordings (PyPI snmpsim-data, UPS/): APC rack PDUs AP7902B, AP8641, AP8932 (PowerNet-MIB rPDU2 and
rPDU tables), Eaton 93E and 9PX UPSes (XUPS-MIB) and a Vertiv/Liebert cooling unit
(LIEBERT-GP-ENVIRONMENTAL-MIB). Every figure the collector reports is compared for equality with the
recording, parsed here and converted to SI units independently of the collector's own tables; a few
figures are also spelled out literally. No Kafka: these tests need only the loopback interface.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from collectors.base import Source, SourceError, load_source
from collectors.scheduler import Scheduler
from collectors.snmp import ber, udp
from collectors.snmp import client as snmp_client
from collectors.snmp.client import CODECS, SnmpClient
from collectors.snmp.models import OID, Junk, oid
from collectors.snmp.source import SnmpSource
from powerplane.schemas import TelemetryFrame
from tests.integration.snmp_server import SnmpSim, parse_snmprec, read_recording, snmpsim_data

RECORDINGS = {
    "ap7902b": "UPS/apc-7902b.snmprec",
    "ap8641": "UPS/apc-8641.snmprec",
    "ap8932": "UPS/apc-8932.snmprec",
    "eaton-93e": "UPS/eaton-93e-80.snmprec",
    "eaton-9px": "UPS/eaton-9px-partial.snmprec",
    "vertiv": "UPS/vertiv-power.snmprec",
}
APC_PDU_SYSOID = "1.3.6.1.2.1.1.2.0|6|1.3.6.1.4.1.318.1.3.4.6"
# Small recordings of misbehaving devices (OID|type|value, in OID order).
JUNK = {
    # rPDU2DeviceStatusPower is an OctetString of junk, and nothing else is served: nothing usable
    "junk-power": [APC_PDU_SYSOID,
                   "1.3.6.1.4.1.318.1.1.26.4.3.1.2.1|2|1",
                   "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1|4|12kW?!"],
    # the same junk power, but the phase current is fine: published with power NaN, warned once
    "junk-partial": [APC_PDU_SYSOID,
                     "1.3.6.1.4.1.318.1.1.26.4.3.1.2.1|2|1",
                     "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1|4|12kW?!",
                     "1.3.6.1.4.1.318.1.1.26.6.3.1.2.1|2|1",
                     "1.3.6.1.4.1.318.1.1.26.6.3.1.3.1|2|1",
                     "1.3.6.1.4.1.318.1.1.26.6.3.1.5.1|66|65"],
    # a partial walk: the device table is missing entirely, only banks answer
    "no-device-table": [APC_PDU_SYSOID,
                        "1.3.6.1.4.1.318.1.1.12.1.16.0|2|-1",
                        "1.3.6.1.4.1.318.1.1.26.8.3.1.2.1|2|1",
                        "1.3.6.1.4.1.318.1.1.26.8.3.1.3.1|2|1",
                        "1.3.6.1.4.1.318.1.1.26.8.3.1.5.1|2|24"],
    # an agent that speaks none of the supported MIBs
    "switch": ["1.3.6.1.2.1.1.1.0|4|some switch", "1.3.6.1.2.1.1.2.0|6|1.3.6.1.4.1.9.1.1"],
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnmpSim]:
    recs: dict[str, Path | str] = {c: snmpsim_data(r) for c, r in RECORDINGS.items()}
    recs.update({c: "\n".join(lines) + "\n" for c, lines in JUNK.items()})
    with SnmpSim(recs, tmp_path_factory.mktemp("snmpsim")) as server:
        yield server


def source(sim: SnmpSim, community: str, **kw: Any) -> SnmpSource:
    opts = {"kind": "snmp", "host": sim.host, "port": sim.port, "community": community, "site": "lab",
            "rack": f"r-{community}", "feed": "A", "timeout_s": 3.0, **kw}
    s = load_source(f"pdu-{community}", opts)
    assert isinstance(s, SnmpSource)
    return s


async def read_once(s: Source, n: int = 1) -> list[TelemetryFrame]:
    await s.start()
    try:
        frames: list[TelemetryFrame] = []
        for _ in range(n):
            frames = await s.read()
        return frames
    finally:
        await s.close()


def read(s: Source, n: int = 1) -> TelemetryFrame:
    [f] = asyncio.run(read_once(s, n))
    f.validate(f"{f.SCHEMA} {f.rack}")
    TelemetryFrame.decode(f.encode())  # the frame survives the wire with the schema's range checks
    return f


# ---- expected values, from the recording ---------------------------------------------------------------
class Rec:
    """A parsed recording with integer lookups (types 2 Integer, 65 Counter32, 66 Gauge32)."""

    def __init__(self, community: str) -> None:
        self.rows = parse_snmprec(read_recording(snmpsim_data(RECORDINGS[community])))

    def integer(self, oid: str) -> int | None:
        t = self.rows.get(oid)
        return int(t[1]) if t is not None and t[0] in ("2", "65", "66") else None

    def column(self, col: str) -> dict[str, int]:
        """{index: value} of an integer column, in OID order."""
        out = {k[len(col) + 1:]: int(v) for k, (t, v) in self.rows.items()
               if k.startswith(col + ".") and t in ("2", "65", "66")}
        return dict(sorted(out.items(), key=lambda kv: tuple(int(p) for p in kv[0].split("."))))

    def oid_column(self, col: str) -> dict[str, str]:
        return {k[len(col) + 1:]: v for k, (t, v) in self.rows.items() if k.startswith(col + ".") and t == "6"}


APC = "1.3.6.1.4.1.318.1.1"


def tenths(raw: int) -> float:
    return math.nan if raw == -1 else raw / 10


def apc_rpdu2_expected(rec: Rec, module: int = 1) -> dict[str, Any]:
    """PowerNet-MIB rPDU2 tables of daisy-chain unit `module`, in SI units."""

    def of_module(table: str, number_col: str | None) -> list[str]:
        mods = rec.column(f"{APC}.26.{table}.2")
        rows = [i for i, mod in mods.items() if mod == module]
        if number_col is not None:
            num = rec.column(f"{APC}.26.{number_col}")
            rows.sort(key=lambda i: num.get(i, 0))
        return rows

    power = math.nan
    for i in of_module("4.3.1", None):
        raw = rec.integer(f"{APC}.26.4.3.1.5.{i}")  # rPDU2DeviceStatusPower, hundredths of kW
        power = math.nan if raw is None or raw == -1 else raw * 10
    if math.isnan(power):
        ident = rec.integer(f"{APC}.12.1.16.0")  # rPDUIdentDevicePowerWatts, W
        power = math.nan if ident is None or ident == -1 else float(ident)
    phase = [tenths(rec.column(f"{APC}.26.6.3.1.5")[i]) for i in of_module("6.3.1", "6.3.1.3")]
    bank = [tenths(rec.column(f"{APC}.26.8.3.1.5")[i]) for i in of_module("8.3.1", "8.3.1.3")]
    outlet = [float(rec.column(f"{APC}.26.9.4.3.1.7")[i]) for i in of_module("9.4.3.1", "9.4.3.1.4")]
    temps = [tenths(rec.column(f"{APC}.26.10.2.2.1.8")[i]) for i in of_module("10.2.2.1", None)]
    return {"power": power, "phase": phase, "bank": bank, "outlet": outlet, "inlet": temps}


def apc_rpdu_expected(rec: Rec) -> dict[str, Any]:
    """PowerNet-MIB rPDU tables: rPDULoadStatusTable rows with bank 0 are phases, the others banks."""
    load = rec.column(f"{APC}.12.2.3.1.1.2")
    phase_no, bank_no = rec.column(f"{APC}.12.2.3.1.1.4"), rec.column(f"{APC}.12.2.3.1.1.5")
    phases = sorted((i for i in load if bank_no[i] == 0), key=lambda i: phase_no[i])
    banks = sorted((i for i in load if bank_no[i] > 0), key=lambda i: bank_no[i])
    watts = rec.integer(f"{APC}.12.1.16.0")
    return {"power": float(watts) if watts is not None and watts != -1 else math.nan,
            "phase": [load[i] / 10 for i in phases], "bank": [load[i] / 10 for i in banks], "outlet": [],
            "inlet": []}


def eaton_expected(rec: Rec) -> dict[str, Any]:
    """XUPS-MIB: xupsOutputWatts (W) summed over the output phases, xupsOutputCurrent (A), ambient (C)."""
    watts = rec.column("1.3.6.1.4.1.534.1.4.4.1.4")
    amps = rec.column("1.3.6.1.4.1.534.1.4.4.1.3")
    ambient = rec.integer("1.3.6.1.4.1.534.1.6.1.0")
    return {"power": float(sum(watts.values())), "phase": [float(amps[i]) for i in watts], "bank": [],
            "outlet": [], "inlet": [] if ambient is None else [float(ambient)]}


def vertiv_expected(rec: Rec, wanted: list[str]) -> list[float]:
    """lgpEnvTemperatureMeasurementDegC (C) of the rows whose description is one of `wanted` (well-known
    temperature OIDs), NaN where the row has no measurement."""
    descr = rec.oid_column("1.3.6.1.4.1.476.1.42.3.4.1.3.3.1.2")
    meas = rec.column("1.3.6.1.4.1.476.1.42.3.4.1.3.3.1.3")
    return [float(meas[i]) if i in meas else math.nan for i, d in descr.items() if d in wanted]


def f32(values: list[float]) -> Any:
    return np.asarray(values, dtype=np.float32) if values else None


def check(f: TelemetryFrame, exp: dict[str, Any], feed: str = "A") -> None:
    power = [exp["power"], math.nan] if feed == "A" else [math.nan, exp["power"]]
    np.testing.assert_array_equal(np.asarray(f.pdu_power_w), np.asarray(power))
    np.testing.assert_array_equal(np.asarray(f.inlet_c), np.asarray(exp["inlet"], dtype=float))
    for field, key in (("pdu_phase_current_a", "phase"), ("pdu_bank_current_a", "bank"),
                       ("pdu_outlet_power_w", "outlet")):
        got, want = getattr(f, field), f32(exp[key])
        if want is None:
            assert got is None, field
        else:
            assert got is not None, field
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want, err_msg=field)
    assert f.power_w.size == 0 and f.servers is None  # a PDU knows no GPUs


# ---- the recordings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("community", ["ap7902b", "ap8641", "ap8932"])
def test_apc_rack_pdus_auto(sim: SnmpSim, community: str) -> None:
    s = source(sim, community)
    f = read(s, n=2)  # the second read polls the plan made by the first
    assert s.plan is not None and s.plan.model == "apc-rpdu2"
    check(f, apc_rpdu2_expected(Rec(community)))
    assert s.problems == []
    assert (f.site, f.rack, f.source, f.interval_s) == ("lab", f"r-{community}", f"pdu-{community}", 10.0)


def test_apc_figures_spelled_out(sim: SnmpSim) -> None:
    """The same figures by hand, from the recordings' lines."""
    f = read(source(sim, "ap8641"))
    assert f.pdu_power_w[0] == 1210.0  # rPDU2DeviceStatusPower.1 = 121 (hundredths of kW)
    assert f.pdu_phase_current_a is not None and f.pdu_phase_current_a.tolist() == [6.5]  # 65 tenths of A
    assert f.pdu_bank_current_a is not None and f.pdu_bank_current_a.tolist() == pytest.approx([3.8, 2.4])
    assert f.pdu_outlet_power_w is not None and f.pdu_outlet_power_w[:4].tolist() == [163.0, 4.0, 81.0, 125.0]
    assert len(f.inlet_c) == 1 and math.isnan(f.inlet_c[0])  # TempC -1: no probe plugged in
    f = read(source(sim, "ap7902b", feed="B"))
    # rPDU2DeviceStatusPower.1 = -1 (not metered by this model): rPDUIdentDevicePowerWatts.0 = 192 W
    assert math.isnan(f.pdu_power_w[0]) and f.pdu_power_w[1] == 192.0
    assert f.inlet_c == [] and f.pdu_outlet_power_w is None  # no sensor rows, no metered outlets
    f = read(source(sim, "ap8932"))
    assert f.pdu_power_w[0] == 160.0


def test_apc_without_outlets(sim: SnmpSim) -> None:
    s = source(sim, "ap8641", outlets=False)
    f = read(s)
    exp = apc_rpdu2_expected(Rec("ap8641"))
    check(f, {**exp, "outlet": []})
    assert s.plan is not None and len(s.plan.points) == 6


def test_apc_older_rpdu_tables(sim: SnmpSim) -> None:
    for community in ("ap7902b", "ap8641", "ap8932"):
        s = source(sim, community, model="apc-rpdu")
        check(read(s), apc_rpdu_expected(Rec(community)))
    f = read(source(sim, "ap8641", model="apc-rpdu"))
    assert f.pdu_power_w[0] == 1230.0  # rPDUIdentDevicePowerWatts.0, W
    assert f.pdu_phase_current_a is not None and f.pdu_phase_current_a.tolist() == [pytest.approx(6.6)]


def test_snmp_v1(sim: SnmpSim) -> None:
    """SNMPv1 (GETNEXT walks, noSuchName handling) reads the same values as v2c."""
    s = source(sim, "ap8641", version="1")
    check(read(s, n=2), apc_rpdu2_expected(Rec("ap8641")))
    check(read(source(sim, "eaton-93e", version="1")), eaton_expected(Rec("eaton-93e")))


@pytest.mark.parametrize("community", ["eaton-93e", "eaton-9px"])
def test_eaton_ups(sim: SnmpSim, community: str) -> None:
    s = source(sim, community)
    f = read(s, n=2)
    assert s.plan is not None and s.plan.model == "eaton"  # the 9PX answers under MGE's sysObjectID
    check(f, eaton_expected(Rec(community)))
    if community == "eaton-93e":
        assert f.pdu_power_w[0] == 11400.0  # 5100 + 3600 + 2700 W
        assert f.inlet_c == [25.0]


def test_vertiv_liebert(sim: SnmpSim) -> None:
    wk = "1.3.6.1.4.1.476.1.42.3.4.1.1"
    rec = Rec("vertiv")
    s = source(sim, "vertiv", temp_points=["control", "supply", "return"])
    f = read(s, n=2)
    assert s.plan is not None and s.plan.model == "vertiv"
    want = vertiv_expected(rec, [f"{wk}.1", f"{wk}.3", f"{wk}.2"])
    np.testing.assert_array_equal(np.asarray(f.inlet_c), np.asarray(want))
    assert len(f.inlet_c) == 3 and f.inlet_c[0] == 23.0 and math.isnan(f.inlet_c[1])  # supply air: no reading
    assert math.isnan(f.pdu_power_w[0]) and f.pdu_phase_current_a is None
    # By default only air entering the racks counts; this unit reports no supply air temperature.
    with pytest.raises(SourceError, match=r"^snmp 127\.0\.0\.1:\d+: model vertiv: nothing to poll "
                                          r"\(lgpEnvTemperatureMeasurementDegC\.2 not served"):
        read(source(sim, "vertiv"))


# ---- misbehaving devices ------------------------------------------------------------------------------
def test_garbage_power_is_an_error_naming_host_and_oid(sim: SnmpSim) -> None:
    with pytest.raises(SourceError) as e:
        read(source(sim, "junk-power"))
    msg = str(e.value)
    assert msg == (f"snmp 127.0.0.1:{sim.port}: no usable reading: 1.3.6.1.4.1.318.1.1.26.4.3.1.5.1 "
                   f"(rPDU2DeviceStatusPower.1) is OctetString '12kW?!', expected an integer")
    assert "\n" not in msg


def test_garbage_next_to_good_values_is_published_and_warned_once(sim: SnmpSim,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "collectors.snmp")
    s = source(sim, "junk-partial")
    f = read(s, n=3)
    assert math.isnan(f.pdu_power_w[0]) and f.pdu_phase_current_a is not None
    assert f.pdu_phase_current_a.tolist() == [6.5]
    warned = [r.getMessage() for r in caplog.records if "partial read" in r.getMessage()]
    assert len(warned) == 1 and "rPDU2DeviceStatusPower.1 is OctetString" not in warned[0]
    assert "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1 (rPDU2DeviceStatusPower.1) is OctetString '12kW?!'" in warned[0]
    assert s.partial_reads == 3 and len(s.problems) == 1


def test_partial_walk_reports_what_is_there(sim: SnmpSim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "collectors.snmp")
    f = read(source(sim, "no-device-table"))
    assert math.isnan(f.pdu_power_w[0]) and f.pdu_phase_current_a is None  # neither table nor fallback
    assert f.pdu_bank_current_a is not None and f.pdu_bank_current_a.tolist() == [pytest.approx(2.4)]
    walk_notes = [r.getMessage() for r in caplog.records if "partial walk" in r.getMessage()]
    assert any("no rPDU2DeviceStatusPower row for module 1" in n for n in walk_notes)


def test_unsupported_device(sim: SnmpSim) -> None:
    with pytest.raises(SourceError, match=r"^snmp 127\.0\.0\.1:\d+: no supported PDU table answers "
                                          r"\(sysObjectID 1\.3\.6\.1\.4\.1\.9\.1\.1; tried PowerNet-MIB rPDU2, "):
        read(source(sim, "switch"))


def test_forced_model_that_does_not_answer(sim: SnmpSim) -> None:
    with pytest.raises(SourceError, match=r"model eaton: nothing to poll \(no xupsOutputWatts rows; tables "
                                          r"answering: none\)"):
        read(source(sim, "ap8641", model="eaton"))


@pytest.mark.parametrize("codec", CODECS)
def test_silent_device_times_out_within_timeout_s(codec: str) -> None:
    """Nothing answers (a bound UDP socket that never replies): read() ends in SourceError, not a hang."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        s = load_source("pdu-dead", {"kind": "snmp", "host": "127.0.0.1", "port": port, "site": "lab",
                                     "rack": "r1", "feed": "A", "timeout_s": 0.5, "retries": 1, "codec": codec})
        t0 = time.monotonic()
        with pytest.raises(SourceError) as e:
            asyncio.run(read_once(s))
        elapsed = time.monotonic() - t0
    assert str(e.value) == (f"snmp 127.0.0.1:{port}: no response within 0.2 s x 2 tries "
                            f"(device down, wrong port or community?)")
    assert elapsed < 4.0  # gives up (2 tries of 0.2 s) rather than hanging; wide bound for shared machines


@pytest.mark.parametrize("codec", CODECS)
def test_wrong_community_times_out(sim: SnmpSim, codec: str) -> None:
    with pytest.raises(SourceError, match=r"no response within 0\.4 s x 1 try"):
        read(source(sim, "no-such-community", timeout_s=0.5, retries=0, codec=codec))


# ---- many sources, one engine, the scheduler ----------------------------------------------------------
def test_scheduler_polls_many_sources_on_one_engine(sim: SnmpSim) -> None:
    names = ["ap7902b", "ap8641", "ap8932", "eaton-93e", "eaton-9px"]
    # Generous timeouts: this checks isolation and the shared engine, not speed (CI machines are shared).
    sources: list[Source] = [source(sim, c, interval_s=1.0, timeout_s=3.0) for c in names * 4]
    for i, s in enumerate(sources):
        s.name = f"{s.name}-{i}"
    sources.append(load_source("pdu-dead", {"kind": "snmp", "host": "127.0.0.1", "port": sim.port,
                                            "community": "no-such-community", "site": "lab", "rack": "rx",
                                            "feed": "A", "interval_s": 1.0, "timeout_s": 1.0}))
    got: list[TelemetryFrame] = []
    sched = Scheduler(sources, got.extend, seed=1)
    asyncio.run(sched.run(threading.Event(), duration_s=4.5))
    ok = [st for st in sched.status.values() if st.name != "pdu-dead"]
    assert all(st.ok >= 2 and st.errors == 0 and st.timeouts == 0 for st in ok), sched.table()
    dead = sched.status["pdu-dead"]
    assert dead.ok == 0 and dead.errors >= 1 and "no response within" in dead.last_error
    assert {f.rack for f in got} == {f"r-{c}" for c in names}
    # every source closed: the shared endpoint (one socket for all) is gone, and pysnmp's engine never came
    assert udp.Shared.endpoint is None and udp.Shared.users == 0
    assert snmp_client._Shared.engines == {}  # the last client out closed the engine


def test_snmpsim_helper_leaves_no_process(tmp_path: Path) -> None:
    server = SnmpSim({"x": "1.3.6.1.2.1.1.2.0|6|1.3.6.1.4.1.318.1.3.4.6\n"}, tmp_path).start()
    assert server.proc is not None
    pgid = server.proc.pid
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_source_moves_to_a_new_event_loop(sim: SnmpSim) -> None:
    """start() in one event loop, then reads in the next ones: the client joins each loop's engine."""
    s = source(sim, "eaton-93e")
    asyncio.run(s.start())  # resolves the address only
    [f] = asyncio.run(read_once(s))
    [f] = asyncio.run(read_once(s))
    assert f.pdu_power_w[0] == 11400.0
    assert udp.Shared.endpoint is None and udp.Shared.users == 0
    assert snmp_client._Shared.engines == {}  # the last client out closed the engine
    s = source(sim, "eaton-93e", codec="pysnmp")  # the same with pysnmp's engine
    [f] = asyncio.run(read_once(s))
    [f] = asyncio.run(read_once(s))
    assert f.pdu_power_w[0] == 11400.0
    assert snmp_client._Shared.engines == {}  # the last client out closed the engine


# ---- the fast path (collectors/snmp/ber.py, udp.py) reads what pysnmp reads -------------------------------
def frame_view(f: TelemetryFrame) -> dict[str, Any]:
    """A frame's readings, comparable with == (NaN as the string 'nan')."""
    def floats(x: Any) -> Any:
        return None if x is None else [repr(float(v)) for v in x]
    return {k: floats(getattr(f, k)) for k in ("pdu_power_w", "inlet_c", "pdu_phase_current_a",
                                               "pdu_bank_current_a", "pdu_outlet_power_w")}


@pytest.mark.parametrize("version", ["2c", "1"])
@pytest.mark.parametrize("community", [*RECORDINGS, *JUNK])
def test_fast_and_pysnmp_codecs_read_identical_frames(sim: SnmpSim, community: str, version: str) -> None:
    """Every recording the tests use, v2c and v1: the same plan (walks), readings, problems, or error."""
    kw: dict[str, Any] = {"temp_points": ["control", "supply", "return"]} if community == "vertiv" else {}
    got: dict[str, Any] = {}
    for codec in CODECS:
        s = source(sim, community, version=version, codec=codec, **kw)
        try:
            f = read(s, n=2)
            got[codec] = (frame_view(f), s.plan, s.problems)
        except SourceError as e:
            got[codec] = str(e)
    assert got["fast"] == got["pysnmp"]
    if community in RECORDINGS:
        assert not isinstance(got["fast"], str), got["fast"]  # a real reading was compared, not two errors


@pytest.mark.parametrize("community", list(RECORDINGS))
def test_fast_and_pysnmp_codecs_decode_every_value_type_alike(sim: SnmpSim, community: str) -> None:
    """A GET of up to 40 OIDs of every type in the recording (OctetString, hex strings, IpAddress, TimeTicks,
    Counter32/64, Gauge32, OIDs...), v2c and v1: identical raw values from both codecs. OIDs that snmpsim
    varies on every read (variation modules, `type:module`) are left out."""
    by_type: dict[str, list[OID]] = defaultdict(list)
    for name, (typ, _value) in parse_snmprec(read_recording(snmpsim_data(RECORDINGS[community]))).items():
        if ":" not in typ:
            by_type[typ].append(oid(name))
    oids = [o for found in by_type.values() for o in found[:40]]

    async def get_all(version: str, codec: str) -> dict[OID, Any]:
        c = SnmpClient(sim.host, sim.port, community, version, 3.0, 1, 40, codec=codec)
        try:
            return await c.get(oids)
        finally:
            c.close()

    for version in ("2c", "1"):
        fast, slow = (asyncio.run(get_all(version, codec)) for codec in CODECS)
        assert fast == slow, [(o, fast.get(o), slow.get(o)) for o in oids if fast.get(o) != slow.get(o)][:5]
        kinds = {type(v).__name__ if not isinstance(v, Junk) else v.type_name for v in fast.values()}
        assert {"int", "tuple", "OctetString"} <= kinds, kinds


# ---- the fast path against a scripted peer -----------------------------------------------------------------
Reply = tuple[str, bytes]  # ("agent" or "other" socket, datagram)
Script = Callable[[bytes, int], list[Reply]]  # (request, how many requests came before) -> replies


class Peer(asyncio.DatagramProtocol):
    """A loopback UDP socket that records what it gets and hands it to `on_datagram`."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.on_datagram: Callable[[bytes, Any], None] = lambda data, addr: None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        self.on_datagram(data, addr)


def answer(request: bytes, varbinds: list[tuple[OID, bytes]], *, request_id: int | None = None,
           community: bytes | None = None, version: int | None = None) -> bytes:
    head = ber.decode_header(request)
    return ber.encode_message(head.version if version is None else version,
                              head.community if community is None else community, ber.RESPONSE,
                              head.request_id if request_id is None else request_id, 0, 0, varbinds)


POWER = oid("1.3.6.1.4.1.318.1.1.26.4.3.1.5.1")


async def scripted_get(script: Script, *, timeout_s: float = 2.0, retries: int = 1
                       ) -> tuple[dict[OID, Any] | SourceError, list[bytes], float, udp.Endpoint | None]:
    """One fast GET of POWER from a client to a peer that answers by `script`; also sends from a second
    socket when the script says "other". Returns (answers or the error, requests seen, seconds, endpoint)."""
    loop = asyncio.get_running_loop()
    agent_t, agent = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    other_t, _other = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    port = agent_t.get_extra_info("sockname")[1]
    c = SnmpClient("127.0.0.1", port, "public", "2c", timeout_s, retries, 40)

    def on_request(data: bytes, addr: Any) -> None:
        for sock, datagram in script(data, len(agent.got) - 1):
            (agent_t if sock == "agent" else other_t).sendto(datagram, addr)

    agent.on_datagram = on_request
    t0 = time.monotonic()
    try:
        result: dict[OID, Any] | SourceError = await c.get([POWER])
    except SourceError as e:
        result = e
    finally:
        ep = c._endpoint
        c.close()
        agent_t.close()
        other_t.close()
    return result, agent.got, time.monotonic() - t0, ep


GOOD = [(POWER, ber.encode_integer(121))]
DECOY = [(POWER, ber.encode_integer(666))]


def test_fast_path_ignores_replies_from_elsewhere_or_to_other_requests() -> None:
    def script(req: bytes, n: int) -> list[Reply]:
        rid = ber.decode_header(req).request_id
        return [("other", answer(req, DECOY)),  # right request-id, wrong source port
                ("agent", answer(req, DECOY, request_id=rid + 1 if rid < ber.REQUEST_ID_MAX else rid - 1)),
                ("agent", answer(req, DECOY, community=b"private")),
                ("agent", answer(req, DECOY, version=ber.VERSION_1)),
                ("agent", b"\x30\x03\x02\x01"),  # garbage that names no request
                ("agent", answer(req, GOOD))]

    result, requests, _s, ep = asyncio.run(scripted_get(script))
    assert result == {POWER: 121} and len(requests) == 1
    assert ep is not None and ep.ignored == 4 and ep.malformed == 1 and not ep.pending
    assert udp.Shared.endpoint is None  # the last client out closed it


@pytest.mark.parametrize(("reply", "reason"), [
    (lambda req: answer(req, GOOD)[:-3], r"truncated"),
    (lambda req: answer(req, GOOD) + b"\x00", r"1 bytes after the end of the message"),
    (lambda req: answer(req, [(POWER, b"\x47\x01\x01")]), r"varbind 1: unknown value tag 0x47"),
    (lambda req: answer(req, [(POWER, b"\x05\x01\x01")]), r"varbind 1: NULL with 1 content octets"),
])
def test_fast_path_malformed_answer_is_a_source_error_at_once(reply: Callable[[bytes], bytes], reason: str) -> None:
    result, _requests, seconds, _ep = asyncio.run(scripted_get(lambda req, n: [("agent", reply(req))]))
    assert isinstance(result, SourceError)
    assert str(result).startswith("snmp 127.0.0.1:") and "malformed response to GET (" in str(result)
    assert re.search(reason, str(result)), str(result)
    assert "\n" not in str(result) and seconds < 1.5  # not a timeout (2 s per try)


def test_fast_path_undecodable_datagram_is_named_when_the_request_times_out() -> None:
    result, requests, _s, _ep = asyncio.run(scripted_get(lambda req, n: [("agent", b"\x30\x84\x00")],
                                                         timeout_s=0.2, retries=1))
    assert isinstance(result, SourceError) and len(requests) == 2
    assert "malformed response to GET (bad length octets at byte 1 (tag 0x30))" in str(result), str(result)


def test_fast_path_retries_the_same_request_and_takes_a_late_answer() -> None:
    def second_try_answered(req: bytes, n: int) -> list[Reply]:
        return [] if n == 0 else [("agent", answer(req, GOOD))]

    result, requests, _s, _ep = asyncio.run(scripted_get(second_try_answered, timeout_s=0.2, retries=2))
    assert result == {POWER: 121}
    assert len(requests) == 2 and requests[0] == requests[1]  # resent unchanged: same request-id
    result, requests, _s, _ep = asyncio.run(scripted_get(lambda req, n: [], timeout_s=0.1, retries=2))
    assert len(requests) == 3 and str(result).endswith("no response within 0.1 s x 3 tries (device down, wrong "
                                                        "port or community?)")


def test_fast_path_bounds_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp, "MAX_PENDING", 2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        clients = [SnmpClient("127.0.0.1", silent.getsockname()[1], "public", "2c", 0.3, 0, 40) for _ in range(3)]

        async def all_three() -> list[Any]:
            try:
                return await asyncio.gather(*(c.get([POWER]) for c in clients), return_exceptions=True)
            finally:
                for c in clients:
                    c.close()

        results = [str(r) for r in asyncio.run(all_three())]
    assert sum("request failed (2 requests already in flight)" in r for r in results) == 1
    assert sum("no response within 0.3 s x 1 try" in r for r in results) == 2


def test_fast_path_cancelled_request_leaves_nothing_behind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        c = SnmpClient("127.0.0.1", silent.getsockname()[1], "public", "2c", 5.0, 1, 40)

        async def abandoned() -> udp.Endpoint | None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.get([POWER]), 0.1)  # what the scheduler does at timeout_s
            ep = c._endpoint
            assert ep is not None and not ep.pending
            c.close()
            return ep

        ep = asyncio.run(abandoned())
    assert ep is not None and ep.closed and udp.Shared.endpoint is None
