"""The scenario file's schema: one pydantic model per event kind, chosen by the event's ``kind``, and the
``[ups]`` table (the twin's UPS signal: trap latency and loss, poll interval, battery; ``sim/ups.py``).

Ranges and defaults live here; ``sim.scenario`` turns a validated file into the ``Scenario`` the twin
runs and resolves its names (levels, zones, racks, pools, jobs) against a site and a workload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainValidator, ValidationError, model_validator

from powerplane.grid import DemandResponse, GridLimits
from powerplane.site import FEEDS, PRIORITIES
from powerplane.validation import Model
from sim.grid_scenario import TrainingJob

SENSORS = ("inlet", "pdu", "gpu_power", "gpu_temp")
NonNeg = Annotated[float, Field(strict=True, ge=0)]  # strict: a bool or a string is not a number


def one_of(options: Sequence[str]) -> AfterValidator:
    def check(v: str) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return v

    return AfterValidator(check)


class _Lasting(Model):
    """An event that may be undone after ``duration_s``."""

    at_s: NonNeg
    duration_s: NonNeg | None = None


class _Instant(Model):
    """An event that is itself an undo or a one-off: no ``duration_s``."""

    at_s: NonNeg


class LoseFeed(_Lasting):
    kind: Literal["lose_feed"]
    feed: Annotated[str, one_of(FEEDS)]


class LoseLevel(_Lasting):
    kind: Literal["lose_level"]
    level: str


class RestoreLevel(_Instant):
    kind: Literal["restore_level"]
    level: str


class CoolingFailure(_Lasting):
    kind: Literal["cooling_failure"]
    zone: str
    capacity_frac: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.0


class LoadSurge(_Lasting):
    kind: Literal["load_surge"]
    factor: NonNeg
    pools: list[str] | None = None
    priority: Annotated[str, one_of(PRIORITIES)] | None = None

    @model_validator(mode="after")
    def _pools_or_priority(self) -> LoadSurge:
        if self.pools is not None and self.priority is not None:
            raise ValueError("give pools or priority, not both")
        return self


class TelemetryDropout(_Lasting):
    kind: Literal["telemetry_dropout"]
    racks: Annotated[list[str], Field(min_length=1)]


class StuckSensor(_Lasting):
    kind: Literal["stuck_sensor"]
    rack: str
    sensor: Annotated[str, one_of(SENSORS)]
    index: Annotated[int, Field(strict=True, ge=0)] = 0


class JobStart(_Instant):
    kind: Literal["job_start"]
    job: str


class JobStop(_Instant):
    kind: Literal["job_stop"]
    job: str


class FalseTrap(_Instant):
    """An on-battery trap from a UPS lineup whose feed is fine (a faulty card, a test trap): what the
    fusion must roll back once the meters refute it."""

    kind: Literal["false_trap"]
    lineup: str


Positive = Annotated[float, Field(strict=True, gt=0)]


def _low_high(v: tuple[float, float]) -> tuple[float, float]:
    """A field check rather than a model one, so it is reported with the other fields' mistakes."""
    if v[0] > v[1]:
        raise ValueError(f"expected [low, high], got low {v[0]:g} above high {v[1]:g}")
    return v


class UpsConfig(Model):
    """``[ups]``: the twin's UPS units and their SNMP signal (docs/twin.md, "UPS units and their signal").

    Latency is uniform over ``trap_latency_ms`` from the event to the trap's arrival (an assumption: no
    published figure for UPS network cards; see docs/twin.md); ``trap_loss`` is the chance a trap is lost
    (UDP, unacknowledged). The battery holds ``runtime_at_rated_s`` at the lineup's rated load."""

    trap_latency_ms: Annotated[tuple[NonNeg, NonNeg], AfterValidator(_low_high)] = (50.0, 300.0)
    trap_loss: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.0
    trap_repeat_s: NonNeg = 60.0  # RFC 1628: upsTrapOnBattery is resent every minute while on battery; 0: never
    poll_interval_s: Annotated[float, Field(strict=True, ge=0.1)] = 10.0
    runtime_at_rated_s: Positive = 300.0
    recharge_s: Positive = 14_400.0
    low_battery_s: NonNeg = 120.0
    voltage_v: Annotated[float, Field(strict=True, gt=0, le=600)] = 480.0
    frequency_hz: Annotated[float, Field(strict=True, ge=40, le=70)] = 60.0
    phases: Annotated[int, Field(strict=True, ge=1, le=3)] = 3



EventConfig = (LoseFeed | LoseLevel | RestoreLevel | CoolingFailure | LoadSurge | TelemetryDropout | StuckSensor
               | JobStart | JobStop | FalseTrap)
EVENT_KINDS: dict[str, type[EventConfig]] = {
    "lose_feed": LoseFeed, "lose_level": LoseLevel, "restore_level": RestoreLevel,
    "cooling_failure": CoolingFailure, "load_surge": LoadSurge, "telemetry_dropout": TelemetryDropout,
    "stuck_sensor": StuckSensor, "job_start": JobStart, "job_stop": JobStop,
    "false_trap": FalseTrap,
}


def _event(v: Any) -> EventConfig:
    """The model of the event's kind validates it. Dispatched by hand rather than with pydantic's tagged
    union so error paths read ``events[2].at_s`` (a tagged union puts the tag into the path)."""
    if not isinstance(v, dict):
        raise ValueError("expected a table ([[events]])")
    model = EVENT_KINDS.get(v["kind"]) if isinstance(v.get("kind"), str) else None
    if model is None:
        kind = v.get("kind")
        err = (ValueError(f"unknown event kind {kind!r} (known: {', '.join(EVENT_KINDS)})") if "kind" in v
               else ValueError("missing (required)"))
        raise ValidationError.from_exception_data(
            "event", [{"type": "value_error", "loc": ("kind",), "input": kind, "ctx": {"error": err}}])
    return model.model_validate(v)


class ScenarioConfig(Model):
    name: Annotated[str, Field(min_length=1)] | None = None  # None: the file's stem
    site: str | None = None  # the site it was written for (checked)
    duration_s: NonNeg | None = None  # how long to run it
    description: str = ""
    events: tuple[Annotated[EventConfig, PlainValidator(_event)], ...] = ()
    ups: UpsConfig = UpsConfig()
    # The grid side (sim.grid_scenario): one large synchronous job, the utility's limits for this run
    # (replacing the site file's), demand-response requests.
    training_job: TrainingJob | None = None
    grid: GridLimits | None = None
    feed_grid: dict[str, GridLimits] = Field(default_factory=dict)
    demand_response: tuple[DemandResponse, ...] = ()
    # evaluate's grid measures start here: before it the twin is starting every pool and job from cold,
    # which is not the plant's behaviour (the reference site's staggered starts take ~30 s).
    measure_from_s: NonNeg = 10.0
    # The scheduler's prolog tells the control plane of every job's start this far ahead (evaluate's full
    # policy hears it then: controllers.grid_limits GridControl.on_job_notice). None: starts come unannounced.
    job_notice_s: NonNeg | None = None
    # Whether the twin's GPUs hold a power floor (power smoothing, as GB300s). False: as H100s, the twin's
    # actuator rejects every power_floor, and evaluate's controller falls back to caps on the compute peak.
    gpu_power_floor: bool = True

    @model_validator(mode="after")
    def _dr_ids_unique(self) -> ScenarioConfig:
        ids = [ev.id for ev in self.demand_response]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"demand_response: id used twice: {', '.join(twice)}")
        return self

