"""What the InfluxDB sink writes for each record: the line protocol a dashboard reads."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from powerplane.schemas import Ack, Command, Event, Headroom, LevelAggregate
from powerplane.validation import ConfigError
from streams.sinks.base import load_sink
from streams.sinks.influx import InfluxSink
from streams.sinks.influx.points import ack_point, aggregate_point, event_point, headroom_point


def _floats_only(line: str) -> None:
    """In line protocol an integer field ends in 'i'; every number the sink writes must be a float."""
    fields = line.split(" ")[-2] if '"' not in line else ""
    assert not re.search(r"=-?\d+i(,|$)", fields), line


def _agg(**kw: object) -> LevelAggregate:
    base = dict(site="lab", level="pdu-b01", kind="pdu", ts_s=1_700_000_000.5, window_s=1, power_w=40000,
                limit_w=46000, rated_w=57500, mode="A-lost", gpus_expected=64, gpus_reporting=63)
    return LevelAggregate(**(base | kw))  # type: ignore[arg-type]


def test_aggregate_new_optional_fields_are_floats_and_absent_ones_are_left_out() -> None:
    line = aggregate_point(_agg(gap_w=800, racks_stale=2, age_s=1.5, gpu_temp_max_c=81,
                                gpus_throttled=3)).to_line_protocol()
    assert line.startswith("pp_level,kind=pdu,level=pdu-b01,mode=A-lost,site=lab ")
    assert line.endswith(" 1700000000500")
    for field in ("gap_w=800", "racks_stale=2", "age_s=1.5", "gpu_temp_max_c=81", "gpus_throttled=3",
                  "gpus_reporting=63"):
        assert field in line
    _floats_only(line)
    bare = aggregate_point(_agg(inlet_c=math.nan)).to_line_protocol()
    assert "inlet_c" not in bare and "gap_w" not in bare and "racks_stale" not in bare  # missing is absent, not 0


def test_headroom_writes_every_numeric_field_present() -> None:
    h = Headroom(site="lab", level="zone-1", kind="zone", ts_s=1_700_000_000.0, mode="normal", horizon_s=10,
                 power_w=300000, limit_w=480000, forecast_p50_w=310000, forecast_p99_w=330000,
                 headroom_w=150000, inlet_c=25, inlet_limit_c=32, forecast_inlet_c=25.5,
                 thermal_headroom_c=6.5, time_to_limit_s=None)
    line = headroom_point(h).to_line_protocol()
    assert line.startswith("pp_headroom,kind=zone,level=zone-1,mode=normal,site=lab ")
    for field in ("headroom_w=150000", "forecast_p99_w=330000", "thermal_headroom_c=6.5", "horizon_s=10",
                  "headroom_frac=0.3125"):
        assert field in line
    assert "time_to_limit_s" not in line and "plan_p99_w" not in line


def test_event_open_and_resolved() -> None:
    e = Event(id="e1", site="lab", kind="breaker_overload", severity="critical", state="open",
              levels=["pdu-b01", "rack-01"], ts_s=100, deadline_s=160, summary='pdu-b01 at 115% "hot"',
              opened_s=90, details={"load_frac": 1.15, "time_to_trip_s": 60, "flag": True, "note": "x",
                                      "active": 5.0})
    line = event_point(e).to_line_protocol()
    assert line.startswith("pp_event,kind=breaker_overload,level=pdu-b01,severity=critical,site=lab,state=open ")
    for field in ("active=1", "deadline_in_s=60", "open_for_s=10", "load_frac=1.15", "time_to_trip_s=60",
                  'summary="pdu-b01 at 115% \\"hot\\""', 'event_id="e1"'):
        assert field in line, field
    assert "flag" not in line and "note" not in line and "active=5" not in line  # bools, strings, reserved names
    e.state, e.deadline_s = "resolved", None
    line = event_point(e).to_line_protocol()
    assert ",state=resolved " in line and "active=0" in line and "deadline_in_s" not in line


def test_command_and_ack_with_latency() -> None:
    sink = load_sink("influxdb", {"kind": "influxdb", "url": "http://x:1", "org": "o", "bucket": "b", "token": "t"})
    assert isinstance(sink, InfluxSink)
    c = Command(id="c1", site="lab", target="rack-01", action="power_cap", gpus=np.arange(4, dtype=np.uint16),
                values=np.array([400, 500, 500, 600], np.float32), params={}, reason="pdu over 80%", issuer="capping",
                issued_at_s=10, lease_s=30)
    a = Ack(command_id="c1", site="lab", target="rack-01", status="applied", gpus=c.gpus, applied=c.values,
            reason="", actuator="twin", ts_s=10.25)
    cmd, ack = (p.to_line_protocol() for p in sink.to_points([c, a]))
    assert cmd.startswith("pp_command,action=power_cap,issuer=capping,site=lab,target=rack-01 ")
    assert "gpus=4" in cmd and "value_mean=500" in cmd and "value_min=400" in cmd and cmd.endswith(" 10000")
    assert ack.startswith("pp_ack,actuator=twin,site=lab,status=applied,target=rack-01 ")
    assert "latency_s=0.25" in ack and "applied_max=600" in ack
    # An ack whose command the sink never saw (or a rejection applying nothing): no latency, no values.
    bare = ack_point(Ack(command_id="zz", site="lab", target="rack-01", status="rejected",
                         gpus=np.zeros(0, np.uint16), applied=np.zeros(0, np.float32), reason="bad signature",
                         actuator="twin", ts_s=11)).to_line_protocol()
    assert "latency_s" not in bare and "applied_mean" not in bare and "gpus=0" in bare


def test_influx_sample_config_loads_and_bad_options_are_refused_with_their_paths() -> None:
    sample = Path(__file__).resolve().parents[2] / "streams" / "sinks" / "influx" / "sample.toml"
    for name, opts in tomllib.loads(sample.read_text())["sinks"].items():
        assert load_sink(name, opts).kind == "influxdb"
    with pytest.raises(ConfigError) as e:
        load_sink("influxdb", {"kind": "influxdb", "url": "127.0.0.1:8086", "org": "", "bucket": "b",
                               "timeout_ms": 1.5})
    assert e.value.errors == [
        "sinks.influxdb.url: must start with http:// or https://, got '127.0.0.1:8086'",
        "sinks.influxdb.org: string should have at least 1 character, got ''",
        "sinks.influxdb.token: missing (required)",
        "sinks.influxdb.timeout_ms: input should be a valid integer, got 1.5",
    ]
