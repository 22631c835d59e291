"""Degraded inputs at the controller (issue 12, findings 3 and 7), in-process: the controller fed as the
Kafka path feeds it (frames straight from pp.telemetry, per-frame and window aggregates from the streams
stage), with no broker. On stale inputs it holds every cap and renews leases (fail-static); estimates
(racks counted at rated power) never brake and never justify a cap; once fresh data is back it decides
again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from controllers.capping import CapSettings
from controllers.controller import CapController
from powerplane.refsite import reference_site
from powerplane.schemas import Command, LevelAggregate, RackSummaryBatch, TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site import Site
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames
from streams.rollup import Limits, frame_outputs
from streams.site_stage import SiteStage

EPOCH_S = 1_700_000_000.0
KEYS = Keyring({"k1": b"\x07" * 32}, "k1")
LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


class Loop:
    """A fleet, the streams stage's pure parts and the controller; power caps applied to the fleet at once."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.fleet = Fleet(site, seed=5, epoch_s=EPOCH_S)
        self.limits = Limits(site)
        self.stage = SiteStage(site)
        self.ctl = CapController(site, KEYS, CapSettings(), lease_s=30.0)
        self.seq = 0
        self.cmds: list[tuple[str, Command]] = []  # (phase, command)

    def step(self) -> tuple[float, list[TelemetryFrame]]:
        fr = self.fleet.step()
        self.seq += 1
        ts = EPOCH_S + self.fleet.t_s
        return ts, rack_frames(self.site, fr, ts, 1.0, self.seq, "sim")

    def worker(self, frames: list[TelemetryFrame], now_s: float) -> None:
        """The streams worker on these frames: per-frame aggregates, then the site stage's windows."""
        sums = []
        for f in frames:
            aggs, s = frame_outputs(self.site, self.limits, f)
            sums.append(s)
            for a in aggs:
                self.ctl.on_aggregate(a, now_s)
        self.windows(self.stage.add_batch(RackSummaryBatch.of(sums)).aggregates, now_s)

    def windows(self, aggs: list[LevelAggregate], now_s: float) -> None:
        for a in aggs:
            self.ctl.on_aggregate(a, now_s)

    def decide(self, now_s: float, phase: str) -> list[Command]:
        cmds = self.ctl.decide(now_s)
        for c in cmds:
            self.cmds.append((phase, c))
            if c.action == "power_cap":
                a = int(self.site.rack_gpu_start[self.site.rack_index(c.target)])
                self.fleet.set_limit(a + c.gpus.astype(np.int64), c.values.astype(np.float64))
        return cmds

    def live(self, seconds: int, phase: str) -> None:
        for _ in range(seconds):
            ts, frames = self.step()
            for f in frames:
                self.ctl.on_frame(f, ts + 0.1)
            self.worker(frames, ts + 0.2)
            self.decide(ts + 0.5, phase)

    def changes(self, phase: str) -> list[Command]:
        return [c for p, c in self.cmds if p == phase and c.reason != "lease renewal"]

    def brakes(self) -> list[Command]:
        return [c for _, c in self.cmds if c.reason.startswith("power brake")]


def _rated_windows(loop: Loop, now_s: float) -> list[LevelAggregate]:
    """What a starved worker's idle timer publishes: windows closed with no frame, every rack stale, past
    `rated_after_s` counted at its rated power."""
    return loop.stage.advance(now_s).aggregates


def test_worker_down_60_s_on_the_100_mw_site_holds_caps_and_never_brakes() -> None:
    """The streams worker starves for 60 s during steady load (frames still reach the controller on
    pp.telemetry; its idle timer closes windows with every rack stale, then at rated power), then catches
    up on its backlog. 0 brake commands, and no cap change that fresh data does not justify."""
    loop = Loop(reference_site())
    loop.live(15, "steady")
    steady_caps = loop.ctl.cap_w.copy()
    backlog: list[tuple[float, list[TelemetryFrame]]] = []
    for _ in range(60):
        ts, frames = loop.step()
        backlog.append((ts, frames))
        for f in frames:
            loop.ctl.on_frame(f, ts + 0.1)
        loop.windows(_rated_windows(loop, ts), ts + 0.2)
        loop.decide(ts + 0.5, "worker down")
    # Restarted: it works through the backlog, 10 s of it per second, while the fleet runs on.
    while backlog:
        ts, frames = loop.step()
        backlog.append((ts, frames))
        for f in frames:
            loop.ctl.on_frame(f, ts + 0.1)
        for _ in range(min(10, len(backlog))):
            _, old = backlog.pop(0)
            loop.worker(old, ts + 0.2)
        loop.decide(ts + 0.5, "catching up")
    loop.live(5, "after")
    assert loop.brakes() == []
    assert loop.changes("worker down") == [] and loop.changes("catching up") == []
    assert loop.changes("after") == []  # steady load: fresh data justifies no change either
    np.testing.assert_array_equal(loop.ctl.cap_w, steady_caps)
    assert loop.ctl.stats.held_decisions >= 45  # from 10 s into the outage until caught up


def test_estimates_at_125_percent_on_paper_never_brake() -> None:
    """The stage's windows count every rack at rated power and put every level at 125 % of its limit, while
    the PDU meters and GPUs, fresh, say steady load: no brake, no shed, no release."""
    loop = Loop(reference_site())
    loop.live(5, "steady")
    caps = loop.ctl.cap_w.copy()
    for _ in range(10):
        ts, frames = loop.step()
        for f in frames:
            loop.ctl.on_frame(f, ts + 0.1)
        for f in frames:  # per-frame aggregates keep coming
            for a in frame_outputs(loop.site, loop.limits, f)[0]:
                loop.ctl.on_aggregate(a, ts + 0.2)
        rated = _rated_windows(loop, ts + 30.0)  # the stage thinks every rack silent for 30 s
        paper = [dataclasses.replace(a, ts_s=ts, power_w=1.25 * a.limit_w) for a in rated]
        loop.windows(paper, ts + 0.2)
        loop.decide(ts + 0.5, "paper")
    assert loop.brakes() == []
    assert loop.changes("paper") == []
    np.testing.assert_array_equal(loop.ctl.cap_w, caps)


def test_broker_outage_60_s_holds_then_resumes() -> None:
    """Lab site, feed A lost and capped; then nothing arrives for 60 s (the broker is down), then the spooled
    frames and the stage's stale windows (every rack at rated power, normal limits) arrive in a burst, then
    live data. Caps are held and renewed through the outage and the burst (not released on stale data, not
    braked), and the controller decides again on fresh data."""
    loop = Loop(load_site(LAB))
    loop.fleet.lose_feed("A")
    loop.live(10, "lost")
    assert loop.changes("lost"), "feed A lost: the controller caps"
    held = loop.ctl.cap_w.copy()
    spool: list[tuple[float, list[TelemetryFrame]]] = []
    for _ in range(60):
        ts, frames = loop.step()
        spool.append((ts, frames))
        loop.decide(ts + 0.5, "outage")
    renewals = [c for p, c in loop.cmds if p == "outage" and c.reason == "lease renewal"]
    assert renewals and {c.target for c in renewals} == {c.target for c in loop.changes("lost")}
    # The broker is back: the stage's idle windows (rated racks), then the spooled frames, in one burst.
    ts, frames = loop.step()
    loop.windows(_rated_windows(loop, ts), ts + 0.2)
    for _, old in spool:
        for f in old:
            loop.ctl.on_frame(f, ts + 0.3)
        loop.worker(old, ts + 0.3)
    loop.decide(ts + 0.5, "burst")
    assert loop.changes("outage") == [] and loop.changes("burst") == []
    np.testing.assert_array_equal(loop.ctl.cap_w, held)
    loop.live(10, "resumed")
    assert loop.brakes() == []
    assert loop.ctl.holding is None  # deciding again
    pdu_b = loop.site.rack_pdu[:, 1]
    _, frames = loop.step()
    assert max(f.pdu_power_w[1] for f in frames) <= CapSettings().high_threshold * loop.ctl.limit_w[pdu_b].min() * 1.02
