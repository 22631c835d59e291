"""Synthetic records for every level kind of a site, for the dashboard's tests and benchmark.

The streams worker publishes rack and PDU aggregates today; the upper levels, headroom and events come
later. To show the dashboard what a full site looks like, this rolls the simple Fleet's rack power up
the whole tree (Site.rollup_w) each second and publishes a LevelAggregate and a Headroom (a naive
forecast: p50 = load, p99 = load + 5%) per level, on the topics and keys the real stages use.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from powerplane import topics
from powerplane.schemas import Ack, Command, Event, Headroom, LevelAggregate
from powerplane.site import KIND_NAMES, Site
from sim.fleet import Fleet

Rec = tuple[str, bytes, bytes, int]  # topic, key, value, timestamp_ms


def tree_records(site: Site, fleet: Fleet, t_s: float, *, headroom: bool = True,
                 mode: str = "normal", frame_offset_s: float = 0.0) -> list[Rec]:
    """One window of aggregates (every level) and headroom (every level but racks) at event time t_s.
    `frame_offset_s`: rack and PDU aggregates stamped that much later, as the per-rack stage stamps them
    with their telemetry frame (N.415 s) while headroom carries its window (N.0 s)."""
    fr = fleet.step(1.0)
    load = site.rollup_w(fr.rack_power_w, mode)  # type: ignore[arg-type]
    rated, derated = site.limits_w(mode)  # type: ignore[arg-type]
    inlet = np.full(len(site.level_ids), np.nan)
    inlet[site.rack_level] = np.nanmax(fr.inlet_c, axis=1)
    out: list[Rec] = []
    ts_ms = int(t_s * 1000)
    for i, lid in enumerate(site.level_ids):
        kind = KIND_NAMES[int(site.level_kind[i])]
        p = float(load[i])
        ts_agg = t_s + frame_offset_s if kind in ("rack", "pdu") else t_s
        agg = LevelAggregate(site=site.name, level=lid, kind=kind, ts_s=ts_agg, window_s=1.0, power_w=p,
                             limit_w=float(derated[i]), rated_w=float(rated[i]), mode=mode, gpus_expected=0,
                             gpus_reporting=0, inlet_c=None if np.isnan(inlet[i]) else float(inlet[i]))
        out.append((topics.AGGREGATES.name, agg.key(), agg.encode(), int(ts_agg * 1000)))
        if headroom and kind != "rack":
            p99 = p * 1.05
            h = Headroom(site=site.name, level=lid, kind=kind, ts_s=t_s, mode=mode, horizon_s=10.0, power_w=p,
                         limit_w=float(derated[i]), forecast_p50_w=p * 1.01, forecast_p99_w=p99,
                         headroom_w=float(derated[i]) - p99)
            out.append((topics.HEADROOM.name, h.key(), h.encode(), ts_ms))
    return out


def frames(site: Site, seconds: int, t0_s: float, seed: int = 0, load_scale: float = 0.8) -> Iterator[list[Rec]]:
    fleet = Fleet(site, seed=seed, epoch_s=t0_s, load_scale=load_scale)
    for k in range(seconds):
        yield tree_records(site, fleet, t0_s + k)


def emergency(site: Site, level: str, t_s: float, *, state: str = "open", deadline_in_s: float = 42.0,
              event_id: str = "ev-test-1") -> Rec:
    ev = Event(id=event_id, site=site.name, kind="breaker_overload", severity="critical", state=state,
               levels=[level], ts_s=t_s, deadline_s=t_s + deadline_in_s,
               summary=f"{level} at 118% of its derated limit: breaker trips in ~{deadline_in_s:.0f} s",
               opened_s=t_s, details={"load_frac": 1.18})
    return (topics.EVENTS.name, ev.id.encode(), ev.encode(), int(t_s * 1000))


def cap_and_ack(site: Site, rack: str, t_s: float, cmd_id: str, *, ack: bool = True) -> list[Rec]:
    gpus = np.arange(8, dtype=np.uint16)
    c = Command(id=cmd_id, site=site.name, target=rack, action="power_cap", gpus=gpus,
                values=np.full(8, 450.0, dtype=np.float32), params={}, reason="pdu over 80%",
                issuer="test", issued_at_s=t_s, lease_s=30.0)
    out: list[Rec] = [(topics.COMMANDS.name, c.key(), c.encode(), int(t_s * 1000))]
    if ack:
        a = Ack(command_id=cmd_id, site=site.name, target=rack, status="applied", gpus=gpus,
                applied=np.full(8, 450.0, dtype=np.float32), reason="", actuator="test", ts_s=t_s + 0.2)
        out.append((topics.ACKS.name, a.key(), a.encode(), int((t_s + 0.2) * 1000)))
    return out
