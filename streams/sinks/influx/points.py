"""Records -> InfluxDB points: pure functions, no I/O (the dashboards' test writes these very points).

One measurement per record type. Tags are the few low-cardinality strings a dashboard groups or
filters by; every number is a float field (a field never changes type between points); a missing or
non-finite value is left out rather than written as 0. Time is the record's event time in ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from powerplane.schemas import Ack, Command, Event, Headroom, LevelAggregate, Record

LEVEL = "pp_level"
HEADROOM = "pp_headroom"
EVENT = "pp_event"
COMMAND = "pp_command"
ACK = "pp_ack"
MEASUREMENTS = (LEVEL, HEADROOM, EVENT, COMMAND, ACK)

# Optional numeric fields written only when present and finite.
_AGGREGATE_OPTIONAL = ("inlet_c", "metered_w", "gap_w", "racks_stale", "age_s", "gpu_temp_max_c", "gpus_throttled")
_HEADROOM_FIELDS = ("horizon_s", "power_w", "limit_w", "forecast_p50_w", "forecast_p99_w", "headroom_w",
                    "plan_horizon_s", "plan_p99_w", "inlet_c", "inlet_limit_c", "forecast_inlet_c",
                    "thermal_headroom_c", "time_to_limit_s")
# Event fields the sink writes itself; a `details` entry of the same name is left out.
_EVENT_RESERVED = frozenset({"active", "deadline_in_s", "open_for_s", "summary", "event_id"})


def _ms(ts_s: float) -> int:
    return round(ts_s * 1000)


def _num(p: Point, name: str, v: Any) -> Point:
    """Add a float field if v is a finite number (bools are not numbers here)."""
    if v is None or isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return p
    f = float(v)
    return p.field(name, f) if math.isfinite(f) else p


def aggregate_point(a: LevelAggregate) -> Point:
    p = (Point(LEVEL).tag("site", a.site).tag("level", a.level).tag("kind", a.kind).tag("mode", a.mode)
         .field("power_w", float(a.power_w)).field("limit_w", float(a.limit_w)).field("rated_w", float(a.rated_w))
         .field("gpus_expected", float(a.gpus_expected)).field("gpus_reporting", float(a.gpus_reporting))
         .time(_ms(a.ts_s), WritePrecision.MS))
    if a.limit_w > 0:
        p = p.field("load_frac", float(a.power_w / a.limit_w))
    for name in _AGGREGATE_OPTIONAL:
        p = _num(p, name, getattr(a, name))
    return p


def headroom_point(h: Headroom) -> Point:
    p = (Point(HEADROOM).tag("site", h.site).tag("level", h.level).tag("kind", h.kind).tag("mode", h.mode)
         .time(_ms(h.ts_s), WritePrecision.MS))
    for name in _HEADROOM_FIELDS:
        p = _num(p, name, getattr(h, name))
    if h.limit_w > 0 and math.isfinite(h.headroom_w):
        p = p.field("headroom_frac", float(h.headroom_w / h.limit_w))  # comparable across levels of any size
    return p


def event_point(e: Event) -> Point:
    p = (Point(EVENT).tag("site", e.site).tag("kind", e.kind).tag("severity", e.severity).tag("state", e.state)
         .tag("level", e.levels[0] if e.levels else "")  # an empty tag is left out of the line
         .field("active", 1.0 if e.state == "open" else 0.0)
         .field("summary", e.summary).field("event_id", e.id)
         .time(_ms(e.ts_s), WritePrecision.MS))
    if e.deadline_s is not None:
        p = _num(p, "deadline_in_s", e.deadline_s - e.ts_s)
    if e.opened_s is not None:
        p = _num(p, "open_for_s", e.ts_s - e.opened_s)
    for k, v in sorted((e.details or {}).items()):
        if isinstance(k, str) and k and k not in _EVENT_RESERVED:
            p = _num(p, k, v)
    return p


def _spread(p: Point, prefix: str, values: np.ndarray[Any, Any]) -> Point:
    v = values[np.isfinite(values)] if values.size else values
    if v.size:
        p = p.field(f"{prefix}_mean", float(v.mean())).field(f"{prefix}_min", float(v.min()))
        p = p.field(f"{prefix}_max", float(v.max()))
    return p


def command_point(c: Command) -> Point:
    p = (Point(COMMAND).tag("site", c.site).tag("target", c.target).tag("action", c.action)
         .tag("issuer", c.issuer)
         .field("gpus", float(c.gpus.size)).field("lease_s", float(c.lease_s))
         .field("command_id", c.id).field("reason", c.reason)
         .time(_ms(c.issued_at_s), WritePrecision.MS))
    return _spread(p, "value", c.values)


def ack_point(a: Ack, issued_at_s: float | None = None) -> Point:
    """issued_at_s: when the acknowledged command was issued, if known, for the command->ack latency."""
    p = (Point(ACK).tag("site", a.site).tag("target", a.target).tag("status", a.status)
         .tag("actuator", a.actuator)
         .field("gpus", float(a.gpus.size)).field("command_id", a.command_id).field("reason", a.reason)
         .time(_ms(a.ts_s), WritePrecision.MS))
    if issued_at_s is not None:
        p = _num(p, "latency_s", a.ts_s - issued_at_s)
    return _spread(p, "applied", a.applied)


def points(records: Iterable[Record], issued_at: Mapping[str, float] | None = None) -> list[Point]:
    """Every record the sink stores, as points; records of other schemas are skipped."""
    out: list[Point] = []
    for r in records:
        if isinstance(r, LevelAggregate):
            out.append(aggregate_point(r))
        elif isinstance(r, Headroom):
            out.append(headroom_point(r))
        elif isinstance(r, Event):
            out.append(event_point(r))
        elif isinstance(r, Command):
            out.append(command_point(r))
        elif isinstance(r, Ack):
            out.append(ack_point(r, (issued_at or {}).get(r.command_id)))
    return out
