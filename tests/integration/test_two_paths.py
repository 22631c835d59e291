"""One policy code, two paths: a twin scenario (feed loss, then a cooling zone at half capacity) run through
the in-process engine and through the real broker (the faust streams worker rolling it up on Kafka, the
controller fed from what the worker published) gives the same commands, second by second."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from controllers.capping import CapSettings
from controllers.controller import CapController
from ops.demo import STREAMS_GROUPS, Services, wait_for_groups
from ops.engine import Engine
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer
from powerplane.schemas import Command, Headroom, LevelAggregate, TelemetryFrame
from powerplane.signing import Keyring
from sim import Twin
from sim.fleet import rack_frames
from sim.scenario import load_scenario
from tests.integration.helpers import end_offsets, start_streams_at_end
from tests.integration.test_streams_site import decoded, site_copy

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 100
SPEED = 8.0
KEYS = Keyring({"k1": b"\x07" * 32}, "k1")


def _key(c: Command) -> tuple[float, str, str, tuple[int, ...], tuple[float, ...], str]:
    return (c.issued_at_s, c.target, c.action, tuple(c.gpus.tolist()), tuple(np.round(c.values, 3).tolist()), c.reason)


def test_kafka_path_and_engine_issue_the_same_commands(cfg: Config, tmp_path: Path) -> None:
    path, site = site_copy(tmp_path, f"lab-2p-{int(time.time())}")
    # Simulated time runs 8x real time from now, so frames run ahead of the worker's clock: the worker is
    # told to take frames up to 2 x SECONDS ahead (by default 5 s ahead is refused as forged). Starting the
    # twin in the past instead would make every window `lag_s` old, and the controller rightly holds on that
    # (docs/safety.md); this test compares the policies on the same inputs, not the pipeline's lag.
    c = cfg.model_copy(update={"site_file": str(path), "telemetry_max_ahead_s": 2.0 * SECONDS})
    scenario = dataclasses.replace(load_scenario(ROOT / "examples" / "scenarios" / "lab-feed-loss-and-cooling.toml"),
                                   site=site.name)
    twin = Twin(site, scenario=scenario, seed=5, epoch_s=float(int(time.time())))
    seconds: list[list[TelemetryFrame]] = []
    for k in range(SECONDS):
        fr = twin.step(1.0)
        seconds.append(rack_frames(site, fr, twin.epoch_s + fr.t_s, 1.0, k + 1, "twin"))

    def controller() -> CapController:
        return CapController(site, KEYS, CapSettings(), 30.0, issuer="two-paths")

    # Path 1: the in-process engine (replay and evaluation).
    eng = Engine(site, KEYS, CapSettings(), 30.0, controller=controller())
    engine_cmds: list[Command] = []
    for frames in seconds:
        for f in frames:
            engine_cmds += eng.feed_frame(f)
        engine_cmds += eng.decide_now(frames[0].ts_s + 0.5)

    # Path 2: the streams worker on the real broker; the controller takes what it published.
    start_streams_at_end(c)
    since = {t: end_offsets(c, t) for t in (topics.AGGREGATES.name, topics.HEADROOM.name)}
    svc = Services(c, tmp_path / "logs")
    last_ts = seconds[-1][0].ts_s
    try:
        svc.start("streams", "streams", "worker")
        wait_for_groups(c, STREAMS_GROUPS, check=svc.check)
        p = Producer(c.kafka_bootstrap, "test-two-paths")
        t0 = time.monotonic()
        for k, frames in enumerate(seconds):
            for f in frames:
                p.send(topics.TELEMETRY.name, f.encode(), key=f.key(), timestamp_ms=int(f.ts_s * 1000))
            p.flush()
            # Paced (8x real time) as collectors publish: a backlog sent at once reaches the worker partition
            # by partition, and one rack's later frames would close windows before the others arrive.
            time.sleep(max(0.0, (k + 1) / SPEED - (time.monotonic() - t0)))
        p.close()
        deadline = time.monotonic() + 90
        aggs: list[LevelAggregate] = []
        while time.monotonic() < deadline:
            aggs = decoded(c, topics.AGGREGATES.name, LevelAggregate, site.name, since[topics.AGGREGATES.name])
            if any(a.kind == "site" and a.ts_s >= last_ts for a in aggs):
                break
            svc.check()
            time.sleep(1.0)
        heads = decoded(c, topics.HEADROOM.name, Headroom, site.name, since[topics.HEADROOM.name])
    finally:
        svc.stop()
    assert any(a.kind == "site" and a.ts_s >= last_ts for a in aggs), "the worker did not roll up the last second"

    ctl = controller()
    kafka_cmds: list[Command] = []
    for frames in seconds:
        ts = frames[0].ts_s
        for f in frames:  # telemetry and the rack stage's per-frame rack and PDU loads, as they arrive
            ctl.on_frame(f)
        for a in aggs:
            if a.ts_s == ts and a.kind in ("rack", "pdu"):
                ctl.on_aggregate(a, ts)
        for h in heads:  # the site stage's window for this second, read within the controller's tick
            if h.ts_s == ts:
                ctl.on_headroom(h, ts + 0.5)
        for a in aggs:
            if a.ts_s == ts and a.kind not in ("rack", "pdu"):
                ctl.on_aggregate(a, ts + 0.5)
        kafka_cmds += ctl.decide(ts + 0.5)

    # The scenario exercised the policies: caps after the feed loss, thermal actions on the hot zone.
    actions = {x.action for x in engine_cmds}
    assert "power_cap" in actions and actions & {"sm_clock_lock", "routing_weight"}, actions
    assert len(engine_cmds) > 20
    # Same commands in the same order: rack, knob, GPUs, values and reason.
    assert [_key(x) for x in kafka_cmds] == [_key(x) for x in engine_cmds]

