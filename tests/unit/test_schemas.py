"""Wire records: round trips, and refusals that tell an operator which record and which field."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import msgpack
import numpy as np
import pytest

from powerplane.schemas import (
    RECORDS,
    Ack,
    Command,
    Event,
    FacilityReading,
    GridCancel,
    GridRequest,
    Headroom,
    JobNotice,
    LevelAggregate,
    RackSummary,
    RackSummaryBatch,
    Record,
    SchemaError,
    TelemetryFrame,
    decode_any,
)


def frame(n: int = 4, **over: Any) -> TelemetryFrame:
    kw: dict[str, Any] = dict(
        site="lab", rack="rack-03", ts_s=1_700_000_000, interval_s=1, seq=7, source="sim",
        gpu_server=np.arange(n, dtype=np.uint16) // 2, gpu_slot=np.arange(n, dtype=np.uint16) % 2,
        power_w=np.linspace(100, 650, n, dtype=np.float32), temp_c=np.full(n, 55.5, np.float32),
        sm_clock_mhz=np.full(n, 1980, np.float32), limit_w=np.full(n, 700, np.float32),
        util=np.full(n, 0.5, np.float32), inlet_c=[22.5, 23], pdu_power_w=[20_000.0, 21_000.0])
    kw.update(over)
    return TelemetryFrame(**kw)


def samples() -> list[Record]:
    return [
        frame(),
        LevelAggregate(site="lab", level="pdu-b03", kind="pdu", ts_s=1_700_000_000, window_s=1,
                       power_w=np.float32(41_000.5),  # type: ignore[arg-type]  # numpy in, float out
                       limit_w=46_000, rated_w=57_500, mode="A-lost",
                       gpus_expected=64, gpus_reporting=63, inlet_c=None, metered_w=41_000),
        RackSummary(site="lab", rack="rack-03", ts_s=1_700_000_000, interval_s=1, seq=7, power_w=41_500,
                    pdu_power_w=[20_000, 21_000], mode="normal", gpus_expected=64, gpus_reporting=63,
                    gpus_throttled=2, inlet_c=24.5, gpu_temp_max_c=81),
        RackSummaryBatch(site="lab", racks=["rack-03", "rack-04"], ts_s=np.array([1.7e9, 1.7e9]),
                         power_w=np.array([41_500.0, 39_000.0]), pdu_a_w=np.array([20_000.0, np.nan]),
                         pdu_b_w=np.array([21_000.0, 19_500.0]), gpus_expected=np.array([64, 64], np.uint32),
                         gpus_reporting=np.array([63, 64], np.uint32), gpus_throttled=np.array([0, 2], np.uint32),
                         inlet_c=np.array([24.5, np.nan]), gpu_temp_max_c=np.array([81.0, 79.0])),
        Headroom(site="lab", level="rack-03", kind="rack", ts_s=1_700_000_000, mode="normal", horizon_s=10,
                 power_w=40_000, limit_w=46_000, forecast_p50_w=41_000, forecast_p99_w=44_500, headroom_w=1_500,
                 plan_horizon_s=900, plan_p99_w=45_000, inlet_c=24.5, inlet_limit_c=32, forecast_inlet_c=25,
                 thermal_headroom_c=7, time_to_limit_s=None),
        Event(id="ev-1", site="lab", kind="feed_loss", severity="critical", state="open",
              levels=["ups-a", "rpp-a1"], ts_s=1_700_000_000, deadline_s=1_700_000_010, summary="feed A lost",
              opened_s=1_700_000_000, details={"load_frac": 1.15}),
        Command(id="c-1", site="lab", target="rack-03", action="power_cap", gpus=np.array([0, 5], np.uint16),
                values=np.array([450, 300], np.float32), params={"why": "test"}, reason="PDU over threshold",
                issuer="capping-controller", issued_at_s=1_700_000_000, lease_s=30, key_id="k1", sig="ab" * 32),
        Ack(command_id="c-1", site="lab", target="rack-03", status="clamped", gpus=np.array([0, 5], np.uint16),
            applied=np.array([450, 200], np.float32), reason="1 value(s) clamped", actuator="twin",
            ts_s=1_700_000_000),
        FacilityReading(site="lab", unit="ups-a", kind="ups", ts_s=1_700_000_000, interval_s=10.0, seq=3,
                        source="ups-a-card", lineup="ups-a", feed="A", input_voltage_v=[243.0],
                        input_frequency_hz=[50.0], output_load_pct=[9.0], output_power_w=[50.0],
                        output_source="battery", on_battery=True, on_bypass=False, battery_remaining_s=17218.0,
                        battery_charge_pct=100.0, alarms=1, alarm_kinds=["on_battery"]),
        GridRequest(id="evt-7", site="lab", issuer="utility-ven", issued_at_s=1_700_000_000, start_s=1_700_000_060,
                    reduce_by_pct=25.0, reduce_to_mw=None, within_s=30.0, hold_s=600.0, feed="util-a", key_id="g1",
                    sig="cd" * 32),
        GridCancel(id="evt-7#cancel", site="lab", issuer="utility-ven", issued_at_s=1_700_000_100, request_id="evt-7",
                   key_id="g1", sig="cd" * 32),
        JobNotice(id="4711.0", site="lab", issuer="slurm prolog on head-1", issued_at_s=1_700_000_000,
                  start_s=1_700_000_030, gpus=["rack-02-s06", "rack-03-s07/gpu2"], expected_w=500.0, key_id="s1",
                  sig="ef" * 32),
    ]


def test_every_record_type_is_covered() -> None:
    assert {type(r).SCHEMA for r in samples()} == set(RECORDS)


@pytest.mark.parametrize("rec", samples(), ids=lambda r: type(r).SCHEMA)
def test_round_trip_keeps_arrays_and_makes_floats_python_floats(rec: Record) -> None:
    data = rec.encode()
    out = type(rec).decode(data)
    assert type(out) is type(rec)
    for f in fields(rec):
        kind = rec.KINDS[f.name]
        a, b = getattr(rec, f.name), getattr(out, f.name)
        if kind.endswith("[]"):
            assert isinstance(b, np.ndarray)
            np.testing.assert_array_equal(b, np.asarray(a))
        elif kind.startswith("float"):
            if a is None:
                assert b is None
            else:
                assert type(b) is float, f"{f.name} decoded as {type(b).__name__}"
                assert b == pytest.approx(float(a))
        elif kind == "f64list":
            assert all(type(x) is float for x in b)
            assert b == pytest.approx([float(x) for x in a])
        else:
            assert b == a
    # Dispatch by the schema name inside the bytes.
    again = decode_any(data)
    assert type(again) is type(rec)
    assert again.encode() == out.encode()


def test_wire_arrays_are_little_endian_raw_bytes() -> None:
    d = msgpack.unpackb(frame().encode(), raw=False)
    assert d["schema"] == "telemetry.frame" and d["v"] == 1
    assert isinstance(d["power_w"], bytes) and len(d["power_w"]) == 4 * 4
    np.testing.assert_array_equal(np.frombuffer(d["power_w"], "<f4"), frame().power_w)


def wire(**over: Any) -> bytes:
    d = frame().to_wire()
    for k, v in over.items():
        if v is KeyError:
            d.pop(k)
        else:
            d[k] = v
    return bytes(msgpack.packb(d, use_bin_type=True))


def refused(data: bytes) -> str:
    with pytest.raises(SchemaError) as ei:
        TelemetryFrame.decode(data)
    return str(ei.value)


def test_mismatched_array_lengths_name_rack_and_field() -> None:
    msg = refused(wire(temp_c=np.zeros(3, "<f4").tobytes()))
    assert "rack-03" in msg and "temp_c" in msg


@pytest.mark.parametrize("bad", [-5.0, math.inf, 1e9])
def test_out_of_range_power_names_rack_and_field(bad: float) -> None:
    p = frame().power_w.copy()
    p[2] = bad
    msg = refused(wire(power_w=p.astype("<f4").tobytes()))
    assert "rack-03" in msg and "power_w" in msg


def test_wrong_schema_name_is_refused() -> None:
    msg = refused(wire(schema="telemetry.frmae"))
    assert "rack-03" in msg and "schema" in msg and "telemetry.frmae" in msg


def test_unknown_version_is_refused() -> None:
    msg = refused(wire(v=2))
    assert "rack-03" in msg and "'v'" in msg and "2" in msg


def test_garbage_bytes_are_a_schema_error_not_a_crash() -> None:
    msg = refused(b"\xc1\xc1 this is not msgpack")
    assert "telemetry.frame" in msg and "MessagePack" in msg
    with pytest.raises(SchemaError):
        decode_any(b"\xc1\xc1 nope")
    # Valid MessagePack that is not a map.
    assert "map" in refused(msgpack.packb([1, 2, 3]))


def test_missing_field_names_rack_and_field() -> None:
    msg = refused(wire(limit_w=KeyError))
    assert "rack-03" in msg and "limit_w" in msg and "missing" in msg


def test_wrong_type_names_rack_and_field() -> None:
    msg = refused(wire(seq="seven"))
    assert "rack-03" in msg and "seq" in msg


def test_nan_readings_pass_as_missing_not_zero() -> None:
    p = frame().power_w.copy()
    p[1] = np.nan
    fr = TelemetryFrame.decode(frame(power_w=p, inlet_c=[math.nan, 24.0], pdu_power_w=[math.nan, 1.0]).encode())
    assert math.isnan(fr.power_w[1])
    assert fr.power_w[0] == pytest.approx(100.0)
    assert math.isnan(fr.inlet_c[0]) and math.isnan(fr.pdu_power_w[0])


def test_command_signing_bytes_exclude_the_signature() -> None:
    cmd = next(r for r in samples() if isinstance(r, Command))
    before = cmd.signing_bytes()
    cmd.sig = "00" * 32
    assert cmd.signing_bytes() == before
    assert b"00" * 32 not in before
    cmd.values = np.array([451, 300], np.float32)
    assert cmd.signing_bytes() != before


def test_command_with_unknown_action_is_refused() -> None:
    cmd = next(r for r in samples() if isinstance(r, Command))
    d = cmd.to_wire()
    d["action"] = "self_destruct"
    with pytest.raises(SchemaError, match="action"):
        Command.decode(msgpack.packb(d, use_bin_type=True))


def test_decode_any_refuses_unknown_schema() -> None:
    with pytest.raises(SchemaError, match="unknown schema"):
        decode_any(msgpack.packb({"schema": "bogus", "v": 1}))
