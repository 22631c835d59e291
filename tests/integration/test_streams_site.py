"""The streams worker on the real broker, driven by the digital twin: every emergency kind before its
deadline, upper levels against the twin's ground truth, headroom on a feed loss, and a worker killed with
SIGKILL whose replacement resumes from the changelog-backed table instead of paging again."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ops.demo import STREAMS_GROUPS, Services, wait_for_groups
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer
from powerplane.schemas import Event, Headroom, LevelAggregate, SchemaError
from powerplane.site import KIND, Site
from powerplane.site_file import load_site
from sim import Twin, load_scenario
from sim.fleet import rack_frames
from tests.integration.conftest import free_port
from tests.integration.helpers import read_messages, start_streams_at_end

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scenarios" / "lab-every-emergency.toml"
SPEED = 8.0  # simulated seconds per wall second


class Plant:
    """The twin publishing its telemetry to pp.telemetry, faster than real time."""

    def __init__(self, cfg: Config, site: Site, epoch_s: float, scenario_file: Path = SCENARIO,
                 speed: float = SPEED) -> None:
        self.site = site
        self.speed = speed
        scenario = dataclasses.replace(load_scenario(scenario_file), site=site.name)  # the lab, renamed
        self.twin = Twin(site, scenario=scenario, seed=3, epoch_s=epoch_s)
        self.producer = Producer(cfg.kafka_bootstrap, "test-twin")
        self.truth: dict[float, np.ndarray] = {}
        self.inlet_true: dict[float, float] = {}
        self.seq = 0

    def run(self, seconds: int) -> None:
        t0 = time.monotonic()
        for i in range(1, seconds + 1):
            fr = self.twin.step(1.0)
            self.seq += 1
            ts = self.twin.epoch_s + fr.t_s
            self.truth[ts] = fr.level_power_w.copy()
            self.inlet_true[ts] = float(fr.rack_inlet_true_c.max())
            for f in rack_frames(self.site, fr, ts, 1.0, self.seq, "twin"):
                self.producer.send(topics.TELEMETRY.name, f.encode(), key=f.key(), timestamp_ms=int(ts * 1000))
            self.producer.flush()
            lag = (i / self.speed) - (time.monotonic() - t0)
            if lag > 0:
                time.sleep(lag)


def decoded(cfg: Config, topic: str, cls: type, site: str,
            start: dict[int, int] | None = None) -> list:  # type: ignore[type-arg]
    """A site's records of one type in a topic (from `start`, see helpers.end_offsets, or the beginning)."""
    out = []
    for m in read_messages(cfg, topic, timeout_s=20, start=start):
        try:
            r = cls.decode(m.value)
        except SchemaError:
            continue
        if r.site == site:
            out.append(r)
    return out


def wait_for_window(cfg: Config, site: str, ts_s: float, timeout_s: float = 30.0) -> None:
    """Until the worker has published the site's aggregate for the window ending at ts_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        aggs = [a for a in decoded(cfg, topics.AGGREGATES.name, LevelAggregate, site) if a.kind == "site"]
        if aggs and max(a.ts_s for a in aggs) >= ts_s:
            return
        time.sleep(1.0)
    raise AssertionError(f"no site aggregate up to {ts_s} within {timeout_s} s")


def site_copy(tmp: Path, name: str, extra: str = "") -> tuple[Path, Site]:
    """The lab site under another name, so each test has its own state in the shared broker; `extra`: TOML
    appended to it (top-level tables)."""
    text = (ROOT / "examples" / "lab.toml").read_text()
    path = tmp / f"{name}.toml"
    path.write_text(re.sub(r'^name = ".*"$', f'name = "{name}"', text, count=1, flags=re.M) + extra)
    return path, load_site(path)


@pytest.mark.integration
def test_worker_detects_every_emergency_and_matches_the_twin(cfg: Config, tmp_path: Path) -> None:
    # A ramp limit the lab's second-to-second swings (10-30 kW/s) exceed: the grid watch's events ride along.
    path, site = site_copy(tmp_path, "lab-emergencies",
                           "\n[grid]\nramp_up_mw_per_s = 0.002\nramp_down_mw_per_s = 0.002\n")
    c = cfg.model_copy(update={"site_file": str(path)})
    svc = Services(c, tmp_path / "logs")
    epoch = float(int(time.time())) - 300  # 8x real time from the past: never ahead of the worker's clock
    plant = Plant(c, site, epoch)
    port = free_port()
    # Start where a deployed worker would stand: not behind what the earlier tests' fleets left on the shared
    # broker (another site's frames, each dead-lettered, would hold back our racks at 8x speed).
    start_streams_at_end(c)
    try:
        svc.start("streams", "streams", "worker", "--metrics-addr", f"127.0.0.1:{port}")
        wait_for_groups(c, STREAMS_GROUPS, check=svc.check)
        plant.run(240)
        wait_for_window(c, site.name, epoch + 236)
        svc.check()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = {line.split()[0]: float(line.split()[1]) for line in r.read().decode().splitlines()
                       if line and not line.startswith("#")}
    finally:
        svc.stop()
        plant.producer.close()

    events: list[Event] = decoded(c, topics.EVENTS.name, Event, site.name)
    opens = [e for e in events if e.state == "open"]
    # What the worker says about itself on /metrics matches what it published.
    assert metrics["powerplane_streams_frames_total"] >= 8 * 240
    assert metrics["powerplane_streams_windows_total"] >= 230
    assert metrics["powerplane_streams_events_total"] >= len(events)
    # Consumer lag per partition of its input, caught up once the last window is out.
    lag = {k: v for k, v in metrics.items()
           if k.startswith('powerplane_consumer_lag_records{group="powerplane-streams-racks"') and "pp.telemetry" in k}
    assert len(lag) == topics.TELEMETRY.partitions, lag
    assert sum(lag.values()) < 8 * 10, lag  # under 10 s of the lab's frames
    # (dead letters may be frames of the other tests' site left on the shared broker: another site's racks)

    def first(kind: str, level: str) -> Event:
        hits = [e for e in opens if e.kind == kind and level in e.levels]
        assert hits, f"no {kind} event naming {level}: {[(e.kind, e.levels[:2]) for e in opens]}"
        return min(hits, key=lambda e: e.ts_s)

    # Losses inside the 10 s ride-through; overload before any trip; cooling before the inlet limit; a silent
    # rack within its bound.
    assert first("feed_loss", "ups-a").ts_s <= epoch + 10 + 10
    assert first("feed_loss", "util-b").ts_s <= epoch + 60 + 10
    crit = [e for e in opens if e.kind == "breaker_overload" and e.severity == "critical"]
    assert crit and all(e.deadline_s is not None and e.deadline_s > e.ts_s for e in crit)
    reach = min(t for t, v in plant.inlet_true.items() if v >= 32.0)
    assert epoch + 130 < first("cooling_failure", "zone-1").ts_s < reach
    assert first("thermal_slowdown", "zone-1")
    assert epoch + 20 <= first("telemetry_loss", "rack-03").ts_s <= epoch + 28
    # The utility's ramp limit: the site's swings while every rack reports, named with their limit.
    grid = [e for e in opens if e.kind == "grid_ramp"]
    assert grid and all(e.levels == [site.name] and "limit of 0.002 MW/s" in e.summary for e in grid)
    # Each occurrence is one id, resolved once.
    for e in events:
        if e.state == "resolved":
            assert [o for o in opens if o.id == e.id], f"resolved {e.id} was never opened"
    assert len({e.id for e in events if e.state == "resolved"}) == len([e for e in events if e.state == "resolved"])

    # Upper levels against the twin's ground truth, away from the feed transitions (PDU meters lag ~10 s).
    aggs = [a for a in decoded(c, topics.AGGREGATES.name, LevelAggregate, site.name)
            if a.kind in ("utility", "ups", "rpp", "row", "hall", "zone", "site")]
    moves = (10, 40, 60, 120)
    est: dict[str, list[float]] = {}
    tru: dict[str, list[float]] = {}
    for a in aggs:
        t = plant.truth.get(a.ts_s)
        if t is None or any(0 <= a.ts_s - epoch - m < 12 for m in moves):
            continue
        i = site.level(a.level)
        est.setdefault(a.level, []).append(a.power_w)
        tru.setdefault(a.level, []).append(float(t[i]))
    assert set(est) >= {"util-a", "util-b", "ups-a", "rpp-a1", "row-1", "hall-1", "zone-1", site.name}
    for level in est:
        if np.mean(tru[level]) > 1_000:
            ratio = np.mean(est[level]) / np.mean(tru[level])
            tol = 0.03 if site.level_kind[site.level(level)] in [KIND[k] for k in ("utility", "ups", "rpp")] else 0.04
            assert abs(ratio - 1) <= tol, (level, ratio)

    # Headroom of the site drops while a feed is lost.
    head = [h for h in decoded(c, topics.HEADROOM.name, Headroom, site.name) if h.level == site.name]
    before = np.mean([h.headroom_w for h in head if epoch + 45 <= h.ts_s < epoch + 55])
    during = np.mean([h.headroom_w for h in head if epoch + 75 <= h.ts_s < epoch + 115])
    assert during < before - 0.3 * abs(before)


@pytest.mark.integration
def test_a_killed_worker_is_replaced_without_paging_again(cfg: Config, tmp_path: Path) -> None:
    path, site = site_copy(tmp_path, "lab-restart")
    c = cfg.model_copy(update={"site_file": str(path)})
    epoch = float(int(time.time())) - 300  # 8x real time from the past: never ahead of the worker's clock
    plant = Plant(c, site, epoch)
    first_svc = Services(c, tmp_path / "logs-1")
    second = Services(c, tmp_path / "logs-2")
    start_streams_at_end(c)
    try:
        first_svc.start("streams", "streams", "worker")
        wait_for_groups(c, STREAMS_GROUPS, check=first_svc.check)
        plant.run(100)  # feed B lost at 60 s: its emergency is open when the worker dies
        wait_for_window(c, site.name, epoch + 96)
        time.sleep(4.0)  # past a checkpoint and an offset commit
        os.killpg(first_svc.procs["streams"].pid, signal.SIGKILL)
        first_svc.procs["streams"].wait()
        second.start("streams", "streams", "worker")
        wait_for_groups(c, STREAMS_GROUPS, check=second.check)
        plant.run(50)  # feed B back at 120 s: the open emergency resolves
        wait_for_window(c, site.name, epoch + 146)
        second.check()
    finally:
        first_svc.stop()
        second.stop()
        plant.producer.close()

    log = (tmp_path / "logs-2" / "streams.log").read_text(errors="replace")
    assert "resumed from its checkpoint" in log, log[-2000:]
    events = decoded(c, topics.EVENTS.name, Event, site.name)
    feed = [e for e in events if e.kind == "feed_loss" and "util-b" in e.levels]
    ids = {e.id for e in feed}
    assert len(ids) == 1, f"the feed loss was paged as {len(ids)} occurrences: {ids}"
    assert [e for e in feed if e.state == "resolved"], "the resumed worker never resolved the feed loss"
    # The site's windows continue across the restart: the replacement replays what the dead worker took after its
    # last checkpoint (streams.handover), so no window is missing (before: up to 11 s of them in CI).
    ts = sorted({a.ts_s for a in decoded(c, topics.AGGREGATES.name, LevelAggregate, site.name)
                 if a.kind == "site"})
    assert ts and ts[-1] >= epoch + 146
    missing = set(np.arange(epoch + 5, epoch + 146)) - set(ts)
    assert not missing, sorted(missing)
