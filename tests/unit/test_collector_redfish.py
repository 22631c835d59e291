"""The redfish collector's JSON extraction (pure functions over dicts) and option validation; no servers."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from collectors.base import SourceConfigError, load_source
from collectors.redfish import RedfishSource
from collectors.redfish import extract as ex


def nan_eq(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(
        (math.isnan(g) and math.isnan(w)) or g == w for g, w in zip(got, want, strict=True))


# ---- links and collections ---------------------------------------------------------------------------
@pytest.mark.parametrize(("ref", "path"), [
    ("/redfish/v1/", "/redfish/v1"),
    ("/redfish/v1/Chassis/1U/Power#/PowerControl/0", "/redfish/v1/Chassis/1U/Power"),
    ("https://bmc.example/redfish/v1/Chassis/1U", "/redfish/v1/Chassis/1U"),
    ("  /redfish/v1/Chassis  ", "/redfish/v1/Chassis"),
])
def test_normalize_path(ref: str, path: str) -> None:
    assert ex.normalize_path(ref) == path


def test_link() -> None:
    doc = {"Power": {"@odata.id": "/redfish/v1/Chassis/1U/Power"}, "Thermal": None, "Bad": "/x", "Empty": {}}
    assert ex.link(doc, "Power") == "/redfish/v1/Chassis/1U/Power"
    assert ex.link(doc, "Thermal") is None and ex.link(doc, "Absent") is None
    with pytest.raises(ex.ExtractError, match="'Bad' is not a link"):
        ex.link(doc, "Bad")
    with pytest.raises(ex.ExtractError, match="'Empty' is not a link"):
        ex.link(doc, "Empty")
    assert ex.links_link({"Links": {"ContainedBy": {"@odata.id": "/redfish/v1/Chassis/A"}}}, "ContainedBy") \
        == "/redfish/v1/Chassis/A"
    assert ex.links_link({}, "ContainedBy") is None


def test_members() -> None:
    assert ex.members({"Members": [{"@odata.id": "/redfish/v1/Chassis/1U"}, {"@odata.id": "/redfish/v1/Chassis/B/"}]}) \
        == ["/redfish/v1/Chassis/1U", "/redfish/v1/Chassis/B"]
    assert ex.members({"Members": []}) == []
    with pytest.raises(ex.ExtractError, match=r"^'Members' missing"):
        ex.members({"Name": "Chassis Collection"})
    with pytest.raises(ex.ExtractError, match=r"'Members' is None, expected a list of links"):
        ex.members({"Members": None})
    with pytest.raises(ex.ExtractError, match=r"Members\[1\] is not a link"):
        ex.members({"Members": [{"@odata.id": "/a"}, {"id": "/b"}]})


# ---- power ----------------------------------------------------------------------------------------
def test_power_control_watts() -> None:
    assert ex.power_control_watts({"PowerControl": [{"PowerConsumedWatts": 344}]}) == 344.0
    assert ex.power_control_watts({"PowerControl": [{"PowerConsumedWatts": 12.5, "PhysicalContext": "Chassis"}]}) \
        == 12.5
    # A sub-domain entry (CPU) before the chassis entry: the chassis one is used.
    doc = {"PowerControl": [{"PhysicalContext": "CPU", "PowerConsumedWatts": 90},
                            {"PhysicalContext": "Chassis", "PowerConsumedWatts": 410}]}
    assert ex.power_control_watts(doc) == 410.0
    # Only sub-domain entries: entry 0.
    assert ex.power_control_watts({"PowerControl": [{"PhysicalContext": "CPU", "PowerConsumedWatts": 90}]}) == 90.0


@pytest.mark.parametrize(("doc", "msg"), [
    ({}, "'PowerControl' missing"),
    ({"PowerControl": []}, "'PowerControl' is [], expected a non-empty list"),
    ({"PowerControl": [{"Name": "x"}]}, "PowerControl[0].PowerConsumedWatts missing"),
    ({"PowerControl": [{"PowerConsumedWatts": None}]}, "PowerControl[0].PowerConsumedWatts is null"),
    ({"PowerControl": [{"PowerConsumedWatts": "n/a"}]},
     "PowerControl[0].PowerConsumedWatts is 'n/a' (str), expected a number"),
    ({"PowerControl": [{"PowerConsumedWatts": True}]}, "is True (bool), expected a number"),
    ({"PowerControl": [{"PowerConsumedWatts": -5}]}, "PowerControl[0].PowerConsumedWatts is -5 W, outside [0, 100000]"),
    ({"PowerControl": [{"PowerConsumedWatts": float("nan")}]}, "expected a finite number"),
    ({"PowerControl": ["x"]}, "PowerControl[0] is 'x', expected an object"),
])
def test_power_control_errors(doc: dict[str, Any], msg: str) -> None:
    with pytest.raises(ex.ExtractError) as ei:
        ex.power_control_watts(doc)
    assert msg in str(ei.value)


def test_environment_and_psu_power() -> None:
    assert ex.environment_power_watts({"PowerWatts": {"Reading": 374, "DataSourceUri": "/x"}}) == 374.0
    assert ex.psu_input_watts({"InputPowerWatts": {"Reading": 937.4}}) == 937.4
    for doc, msg in [({}, "'PowerWatts' missing"), ({"PowerWatts": 5}, "'PowerWatts' is 5, expected an object"),
                     ({"PowerWatts": {}}, "'PowerWatts.Reading' missing"),
                     ({"PowerWatts": {"Reading": None}}, "PowerWatts.Reading is null")]:
        with pytest.raises(ex.ExtractError, match=re.escape(msg)):
            ex.environment_power_watts(doc)
    with pytest.raises(ex.ExtractError, match=re.escape("InputPowerWatts.Reading is 'x'")):
        ex.psu_input_watts({"InputPowerWatts": {"Reading": "x"}})
    assert ex.has_excerpt({"PowerWatts": {"Reading": None}}, "PowerWatts")
    assert not ex.has_excerpt({"TemperatureCelsius": {"Reading": 3}}, "PowerWatts")


def test_state() -> None:
    assert ex.state({"Status": {"State": "Absent"}}) == "Absent"
    assert ex.state({"Status": {}}) is None and ex.state({}) is None


# ---- inlet temperatures ---------------------------------------------------------------------------
def test_is_intake() -> None:
    assert ex.is_intake("Intake", None)
    assert ex.is_intake("SystemBoard", "System Board Inlet Temp")
    assert ex.is_intake(None, "Front Panel INTAKE")
    assert not ex.is_intake("Exhaust", "Exhaust Temp") and not ex.is_intake("CPU", None)


def test_thermal_inlets() -> None:
    doc = {"Temperatures": [
        {"Name": "CPU1 Temp", "PhysicalContext": "CPU", "ReadingCelsius": 41},
        {"Name": "Chassis Intake Temp", "PhysicalContext": "Intake", "ReadingCelsius": 25},
        {"Name": "System Board Inlet Temp", "PhysicalContext": "SystemBoard", "ReadingCelsius": 24.5},
        {"Name": "Inlet 2", "PhysicalContext": "Intake", "Status": {"State": "Absent"}},
        {"Name": "Inlet 3", "PhysicalContext": "Intake", "ReadingCelsius": "n/a"},
        {"Name": "Exhaust Temp", "PhysicalContext": "Exhaust", "ReadingCelsius": 40},
    ]}
    values, notes = ex.thermal_inlets(doc)
    assert nan_eq(values, [25.0, 24.5, math.nan, math.nan])
    assert notes == ["Temperatures[3].ReadingCelsius is null (Status.State Absent)",
                     "Temperatures[4].ReadingCelsius is 'n/a' (str), expected a number"]
    assert ex.thermal_inlets({"Temperatures": []}) == ([], [])
    with pytest.raises(ex.ExtractError, match="'Temperatures' missing"):
        ex.thermal_inlets({"Fans": []})
    with pytest.raises(ex.ExtractError, match="'Temperatures' is"):
        ex.thermal_inlets({"Temperatures": {"a": 1}})


def test_thermal_metrics_inlets() -> None:
    doc = {
        "TemperatureSummaryCelsius": {"Intake": {"Reading": 24.8}, "Exhaust": {"Reading": 40.5}},
        "TemperatureReadingsCelsius": [
            {"Reading": 22.25, "PhysicalContext": "Intake", "DeviceName": "Front Inlet Left"},
            {"Reading": None, "PhysicalContext": "Intake"},
            {"Reading": 40.5, "DeviceName": "Exhaust"},
            {"Reading": 24.8, "DeviceName": "Intake"},  # the DMTF mockup style: no PhysicalContext
        ]}
    values, notes = ex.thermal_metrics_inlets(doc)
    assert nan_eq(values, [22.25, math.nan, 24.8])
    assert notes == ["TemperatureReadingsCelsius[1].Reading is null"]
    # No per-sensor intake readings: the summary's Intake.
    summary_only = {"TemperatureSummaryCelsius": {"Intake": {"Reading": 24.8}},
                    "TemperatureReadingsCelsius": [{"Reading": 40.5, "DeviceName": "Exhaust"}]}
    assert ex.thermal_metrics_inlets(summary_only) == ([24.8], [])
    assert ex.thermal_metrics_inlets({"TemperatureSummaryCelsius": {"Internal": {"Reading": 39}}}) == ([], [])
    with pytest.raises(ex.ExtractError, match="'TemperatureReadingsCelsius' is"):
        ex.thermal_metrics_inlets({"TemperatureReadingsCelsius": 3})


def test_sensors() -> None:
    intake = {"ReadingType": "Temperature", "PhysicalContext": "Intake", "Reading": 24.8, "ReadingUnits": "Cel"}
    assert ex.is_intake_temperature_sensor(intake)
    assert ex.is_intake_temperature_sensor({"ReadingType": "Temperature", "Name": "Inlet Temp", "Reading": 1})
    assert not ex.is_intake_temperature_sensor({"ReadingType": "Power", "PhysicalContext": "Intake"})
    assert not ex.is_intake_temperature_sensor({"ReadingType": "Temperature", "PhysicalContext": "Exhaust"})
    assert ex.sensor_temperature(intake) == (24.8, [])
    v, notes = ex.sensor_temperature({"ReadingType": "Temperature", "Reading": None,
                                      "Status": {"State": "UnavailableOffline"}})
    assert math.isnan(v) and notes == ["Reading is null (Status.State UnavailableOffline)"]
    with pytest.raises(ex.ExtractError, match="ReadingType is 'Power'"):
        ex.sensor_temperature({"ReadingType": "Power", "Reading": 5})


# ---- options (configure does no I/O) ---------------------------------------------------------------------
BASE = {"kind": "redfish", "url": "https://192.0.2.10", "site": "lab", "rack": "r01", "server": 2}


def make(**kw: Any) -> RedfishSource:
    opts = {**BASE, **kw}
    src = load_source("bmc", {k: v for k, v in opts.items() if v is not None})
    assert isinstance(src, RedfishSource)
    return src


def test_defaults_and_url_forms() -> None:
    src = make()
    assert (src.url, src.interval_s, src.timeout_s, src.verify_tls, src.auth) == (
        "https://192.0.2.10", 10.0, 5.0, True, "basic")
    assert (src.site, src.rack, src.server, src.chassis_id, src.username) == ("lab", "r01", 2, None, None)
    assert make(url="https://192.0.2.10:8443/redfish/v1/").url == "https://192.0.2.10:8443"
    assert make(url="http://192.0.2.10/bmc7/").url == "http://192.0.2.10/bmc7"
    assert make(interval_s=30).timeout_s == 5.0 and make(interval_s=2).timeout_s == pytest.approx(1.6)


@pytest.mark.parametrize(("kw", "key"), [
    ({"url": None}, "url"), ({"url": "192.0.2.10"}, "url"), ({"url": "ftp://192.0.2.10"}, "url"),
    ({"url": "https://192.0.2.10/?x=1"}, "url"),
    ({"rack": None}, "rack"), ({"server": None}, "server"), ({"server": -1}, "server"),
    ({"server": 70000}, "server"), ({"site": None}, "site"),
    ({"verify_tls": "yes"}, "verify_tls"), ({"auth": "digest", "username": "u", "password": "p"}, "auth"),
    ({"password": "p"}, "username"), ({"username": "u"}, "password"),
    ({"verify_tls": False, "ca_file": "/etc/ca.pem"}, "ca_file"),
    ({"chassis": ""}, "chassis"), ({"timeout_s": 0}, "timeout_s"), ({"interval_s": "10"}, "interval_s"),
])
def test_bad_options_name_the_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(SourceConfigError) as e:
        make(**kw)
    [line] = e.value.errors
    assert line.startswith(f"sources.bmc.{key}: ")


def test_sample_toml_configures() -> None:
    """The sample config is valid (configure does no I/O, so its documentation addresses are never contacted)."""
    import tomllib
    from pathlib import Path

    tables = tomllib.loads((Path(__file__).resolve().parents[2] / "collectors/redfish/sample.toml").read_text())
    srcs = [load_source(name, opts) for name, opts in tables["sources"].items()]
    assert [(s.name, s.kind) for s in srcs] == [("r07-s03-bmc", "redfish"), ("r07-s04-bmc", "redfish")]
    a, b = srcs
    assert isinstance(a, RedfishSource) and isinstance(b, RedfishSource)
    assert (a.url, a.auth, a.verify_tls, a.server, a.interval_s, a.timeout_s) == (
        "https://192.0.2.10", "basic", True, 3, 10.0, 5.0)
    assert (b.url, b.auth, b.verify_tls, b.server) == ("https://192.0.2.11", "session", False, 4)
