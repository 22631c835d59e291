"""Pure functions over Redfish JSON documents (dicts): links, collections, power and inlet readings.

Nothing here does I/O. Power extractors raise ExtractError with what is wrong (the caller adds the
BMC url and the resource path); thermal extractors never raise for a bad reading: they return NaN for
that sensor plus a note, because a server's power is still worth publishing when one inlet sensor is
broken. Precedence between the resources is decided by the source (see README.md beside this file).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

Doc = Mapping[str, Any]

# Status.State values of a resource that has no reading by design (not an error to report on power).
ABSENT_STATES = frozenset({"Absent"})


class ExtractError(ValueError):
    """What is wrong with one resource; the caller adds the BMC url and the resource path."""


# ---- links and collections -------------------------------------------------------------------
def normalize_path(odata_id: str) -> str:
    """A resource path from an @odata.id: fragment (#/PowerControl/0) and trailing '/' dropped.

    An absolute URL keeps only its path (the caller checks the host where it matters)."""
    ref = odata_id.strip()
    if "://" in ref:
        ref = urlsplit(ref).path
    ref = ref.split("#", 1)[0]
    ref = ref.rstrip("/")
    return ref or "/"


def link(doc: Doc, key: str) -> str | None:
    """The path of the navigation link doc[key] ({"@odata.id": ...}); None when the key is absent.

    A key that is present but not a link is an error (a BMC that answers garbage)."""
    if key not in doc or doc[key] is None:
        return None
    v = doc[key]
    if not isinstance(v, Mapping) or not isinstance(v.get("@odata.id"), str) or not v["@odata.id"].strip():
        raise ExtractError(f"'{key}' is not a link (expected {{\"@odata.id\": \"/redfish/v1/...\"}}, got {_short(v)})")
    return normalize_path(v["@odata.id"])


def links_link(doc: Doc, key: str) -> str | None:
    """A link under doc["Links"][key] (ContainedBy, Sessions); None when absent."""
    lk = doc.get("Links")
    if not isinstance(lk, Mapping):
        return None
    return link(lk, key)


def members(doc: Doc) -> list[str]:
    """The member paths of a collection; an error when Members is missing or not a list of links."""
    if "Members" not in doc:
        raise ExtractError("'Members' missing (not a Redfish collection)")
    ms = doc["Members"]
    if not isinstance(ms, list):
        raise ExtractError(f"'Members' is {_short(ms)}, expected a list of links")
    out: list[str] = []
    for i, m in enumerate(ms):
        if not isinstance(m, Mapping) or not isinstance(m.get("@odata.id"), str) or not m["@odata.id"].strip():
            raise ExtractError(f"Members[{i}] is not a link (got {_short(m)})")
        out.append(normalize_path(m["@odata.id"]))
    return out


def last_segment(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def state(doc: Doc) -> str | None:
    st = doc.get("Status")
    if isinstance(st, Mapping) and isinstance(st.get("State"), str):
        return str(st["State"])
    return None


# ---- numbers -----------------------------------------------------------------------------------
def number(v: Any, where: str) -> float:
    """A finite JSON number, else ExtractError naming the property and what it held."""
    if v is None:
        raise ExtractError(f"{where} is null")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ExtractError(f"{where} is {_short(v)} ({type(v).__name__}), expected a number")
    f = float(v)
    if not math.isfinite(f):
        raise ExtractError(f"{where} is {f}, expected a finite number")
    return f


def watts(v: Any, where: str) -> float:
    """A power reading: a number in [0, 100000] W (the telemetry frame's range for server_power_w)."""
    f = number(v, where)
    if not 0.0 <= f <= 100_000.0:
        raise ExtractError(f"{where} is {f:g} W, outside [0, 100000]")
    return f


def excerpt_reading(doc: Doc, key: str) -> float:
    """doc[key]["Reading"] (a SensorExcerpt such as EnvironmentMetrics.PowerWatts), as a number."""
    if key not in doc:
        raise ExtractError(f"'{key}' missing")
    ex = doc[key]
    if not isinstance(ex, Mapping):
        raise ExtractError(f"'{key}' is {_short(ex)}, expected an object with 'Reading'")
    if "Reading" not in ex:
        raise ExtractError(f"'{key}.Reading' missing")
    return number(ex["Reading"], f"{key}.Reading")


def has_excerpt(doc: Doc, key: str) -> bool:
    """Whether doc carries the excerpt doc[key] at all (its value may still be null)."""
    return isinstance(doc.get(key), Mapping)


# ---- power -------------------------------------------------------------------------------------
def environment_power_watts(doc: Doc) -> float:
    """Chassis EnvironmentMetrics: PowerWatts.Reading (newer schema)."""
    f = excerpt_reading(doc, "PowerWatts")
    return watts(f, "PowerWatts.Reading")


def psu_input_watts(doc: Doc) -> float:
    """PowerSupplyMetrics (PowerSubsystem/PowerSupplies/<id>/Metrics): InputPowerWatts.Reading."""
    f = excerpt_reading(doc, "InputPowerWatts")
    return watts(f, "InputPowerWatts.Reading")


def power_control_index(doc: Doc) -> int:
    """Which PowerControl entry measures the whole chassis: the first whose PhysicalContext is absent or
    "Chassis"; otherwise entry 0. ExtractError when PowerControl is missing or empty."""
    pcs = doc.get("PowerControl")
    if "PowerControl" not in doc:
        raise ExtractError("'PowerControl' missing")
    if not isinstance(pcs, list) or not pcs:
        raise ExtractError(f"'PowerControl' is {_short(pcs)}, expected a non-empty list")
    for i, pc in enumerate(pcs):
        if isinstance(pc, Mapping) and pc.get("PhysicalContext") in (None, "Chassis"):
            return i
    return 0


def power_control_watts(doc: Doc) -> float:
    """Older Power resource: PowerControl[i].PowerConsumedWatts (i from power_control_index)."""
    i = power_control_index(doc)
    pc = doc["PowerControl"][i]
    where = f"PowerControl[{i}].PowerConsumedWatts"
    if not isinstance(pc, Mapping):
        raise ExtractError(f"PowerControl[{i}] is {_short(pc)}, expected an object")
    if "PowerConsumedWatts" not in pc:
        raise ExtractError(f"{where} missing")
    return watts(pc["PowerConsumedWatts"], where)


# ---- inlet temperature -------------------------------------------------------------------------
def is_intake(physical_context: Any, name: Any) -> bool:
    """An inlet sensor: PhysicalContext "Intake", or a name containing "inlet" or "intake"."""
    if physical_context == "Intake":
        return True
    return isinstance(name, str) and ("inlet" in name.lower() or "intake" in name.lower())


def _temperature(v: Any, where: str, st: str | None, notes: list[str]) -> float:
    """One inlet reading; NaN with a note when it is absent, null or not a number (never 0)."""
    if v is None:
        notes.append(f"{where} is null" + (f" (Status.State {st})" if st else ""))
        return math.nan
    try:
        return number(v, where)
    except ExtractError as e:
        notes.append(str(e))
        return math.nan


def thermal_inlets(doc: Doc) -> tuple[list[float], list[str]]:
    """Older Thermal resource: Temperatures[] that are inlet sensors -> (ReadingCelsius each, notes)."""
    if "Temperatures" not in doc:
        raise ExtractError("'Temperatures' missing")
    temps = doc["Temperatures"]
    if not isinstance(temps, list):
        raise ExtractError(f"'Temperatures' is {_short(temps)}, expected a list")
    values: list[float] = []
    notes: list[str] = []
    for i, t in enumerate(temps):
        if not isinstance(t, Mapping) or not is_intake(t.get("PhysicalContext"), t.get("Name")):
            continue
        values.append(_temperature(t.get("ReadingCelsius"), f"Temperatures[{i}].ReadingCelsius", state(t), notes))
    return values, notes


def thermal_metrics_inlets(doc: Doc) -> tuple[list[float], list[str]]:
    """Newer ThermalSubsystem/ThermalMetrics: TemperatureReadingsCelsius[] that are inlet sensors
    (PhysicalContext "Intake", or DeviceName with inlet/intake); if there are none,
    TemperatureSummaryCelsius.Intake.Reading; neither -> no sensors."""
    readings = doc.get("TemperatureReadingsCelsius")
    values: list[float] = []
    notes: list[str] = []
    if readings is not None and not isinstance(readings, list):
        raise ExtractError(f"'TemperatureReadingsCelsius' is {_short(readings)}, expected a list")
    for i, r in enumerate(readings or []):
        if not isinstance(r, Mapping) or not is_intake(r.get("PhysicalContext"), r.get("DeviceName")):
            continue
        values.append(_temperature(r.get("Reading"), f"TemperatureReadingsCelsius[{i}].Reading", None, notes))
    if values:
        return values, notes
    summary = doc.get("TemperatureSummaryCelsius")
    if isinstance(summary, Mapping) and isinstance(summary.get("Intake"), Mapping):
        return [_temperature(summary["Intake"].get("Reading"), "TemperatureSummaryCelsius.Intake.Reading",
                             None, notes)], notes
    return [], []


def is_intake_temperature_sensor(doc: Doc) -> bool:
    """A Sensor resource (Chassis/<id>/Sensors/<sensor>) measuring inlet air temperature."""
    return doc.get("ReadingType") == "Temperature" and is_intake(doc.get("PhysicalContext"), doc.get("Name"))


def sensor_temperature(doc: Doc) -> tuple[float, list[str]]:
    """A temperature Sensor's Reading (Celsius): (value or NaN, notes)."""
    notes: list[str] = []
    if doc.get("ReadingType") != "Temperature":
        raise ExtractError(f"ReadingType is {_short(doc.get('ReadingType'))}, expected 'Temperature'")
    return _temperature(doc.get("Reading"), "Reading", state(doc), notes), notes


def _short(v: Any, n: int = 40) -> str:
    s = repr(v).replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."
