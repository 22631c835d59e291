"""The in-process engine answers "what would the policy have done" on a recording, with the same
roll-up and capping code as the Kafka path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from collectors.base import SourceContext
from controllers.capping import CapSettings
from controllers.controller import CapController
from controllers.service import live_actions
from ops.cli import main
from ops.engine import Engine
from ops.grid_eval import prepare
from powerplane import topics
from powerplane.config import Config
from powerplane.recording import Recorded, RecordingWriter, iter_records
from powerplane.schemas import RackSummary, RackSummaryBatch, TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site import KIND, Site
from powerplane.site_file import load_site
from sim import Twin
from sim.fleet import Fleet, rack_frames
from sim.scenario import load_scenario
from sim.source import FleetSource
from streams.rollup import Limits, frame_outputs
from streams.site_stage import SiteStage

ROOT = Path(__file__).resolve().parents[2]
KEYS = Keyring({"k1": b"k" * 32}, "k1")


def _frames(lose_at: int = 5, n: int = 20) -> list[TelemetryFrame]:
    site = load_site(ROOT / "examples" / "lab.toml")
    fleet = Fleet(site, seed=4, epoch_s=1_790_000_000.0)
    src = FleetSource("sim", {"interval_s": 1.0}, SourceContext(site=site, plant=fleet))
    out: list[TelemetryFrame] = []
    for i in range(n):
        if i == lose_at:
            fleet.lose_feed("A")
        out += src.read_batch()
    return out


def test_feed_loss_in_a_recording_shows_the_caps_the_policy_would_issue(tmp_path: Path) -> None:
    frames = _frames()
    w = RecordingWriter(tmp_path / "rec", [topics.TELEMETRY.name])
    for i, f in enumerate(frames):
        w.add(Recorded(topics.TELEMETRY.name, 0, i, int(f.ts_s * 1000), f.key(), f.encode(), []))
    w.add(Recorded(topics.TELEMETRY.name, 0, len(frames), int(frames[-1].ts_s * 1000), b"rack-01", b"junk", []))
    w.close()
    site = load_site(ROOT / "examples" / "lab.toml")
    res = Engine(site, KEYS, CapSettings(), 30.0).run(iter_records(tmp_path / "rec"))
    # Rack and PDU aggregates per frame, and the upper levels once per closed window (the site stage).
    upper = sum(int((site.level_kind == KIND[k]).sum()) for k in ("utility", "ups", "rpp", "row", "hall", "zone",
                                                                   "site"))
    assert res.frames == len(frames) and res.aggregates == 3 * len(frames) + upper * res.windows
    assert res.windows >= len(frames) // site.n_racks - 3
    # The same emergency detection as the streams worker: the lost feed is an event.
    assert [e for e in res.events if e.kind == "feed_loss" and e.levels[0] == "util-a" and e.state == "open"]
    caps = [c for c in res.commands if c.reason != "lease renewal"]
    loss_ts = frames[5 * site.n_racks].ts_s
    assert caps and min(c.issued_at_s for c in caps) >= loss_ts  # nothing before the feed loss
    assert {c.target for c in caps} == set(site.rack_ids)  # every rack's B PDU went over
    assert all(KEYS.verify(c) is None for c in res.commands)
    assert sum(res.dead_letters.values()) == 1  # the junk record is counted, not fatal


def test_engine_decides_exactly_what_the_kafka_path_controller_decides() -> None:
    frames = _frames()
    site = load_site(ROOT / "examples" / "lab.toml")
    mine, live = _both_paths(site, frames, frozenset(("power_cap", "sm_clock_lock", "routing_weight")))
    assert [t for t, _, _ in mine] == [t for t, _, _ in live] and mine
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(mine, live, strict=True))


def test_power_floors_of_the_live_controller_are_the_engines() -> None:
    # `power_floors = "on"`: the live controller's knobs (controllers.service.live_actions) in both paths, on the
    # lab's synchronous job under its utility ramp limit (lab-grid-ramp.toml): the same floors, rack by rack.
    site = load_site(ROOT / "examples" / "lab.toml")
    sc = load_scenario(ROOT / "examples" / "scenarios" / "lab-grid-ramp.toml", site=site)
    site, workload, _ = prepare(site, None, sc)
    twin = Twin(site, workload, sc, seed=0, epoch_s=1_790_000_000.0)
    frames = [f for k in range(40) for f in rack_frames(site, twin.step(1.0), twin.epoch_s + k + 1.0, 1.0, k, "twin")]
    actions = live_actions(Config(power_floors="on"))
    assert "power_floor" in actions and "power_floor" not in live_actions(Config())
    mine, live = _both_paths(site, frames, actions)
    assert [(t, a) for t, a, _ in mine] == [(t, a) for t, a, _ in live]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(mine, live, strict=True))
    floors = [(t, v) for t, a, v in live if a == "power_floor"]
    assert len({t for t, _ in floors}) >= 2 and all(((v >= 200) & (v <= 700)).all() for _, v in floors)


def _both_paths(site: Site, frames: list[TelemetryFrame], actions: frozenset[str]
                ) -> tuple[list[tuple[str, str, np.ndarray]], list[tuple[str, str, np.ndarray]]]:
    """(the engine's commands, the Kafka path's) as (rack, action, values). The Kafka path: the rack agent's
    per-frame aggregates, the site agent's windows (one batch per second of summaries), and the controller
    ticking on the same clock. (tests/integration/test_two_paths.py runs the real thing through the broker.)"""
    eng = Engine(site, KEYS, CapSettings(), 30.0,
                 controller=CapController(site, KEYS, CapSettings(), 30.0, issuer="in-process-engine", actions=actions))
    ctl = CapController(site, KEYS, CapSettings(), 30.0, actions=actions)
    limits = Limits(site)
    stage = SiteStage(site)
    pending: list[RackSummary] = []
    live: list[tuple[str, str, np.ndarray]] = []
    next_tick = frames[0].ts_s + 1.0
    for f in frames:
        eng.feed_frame(f)
        while f.ts_s >= next_tick:
            live += [(c.target, c.action, c.values) for c in ctl.decide(next_tick)]
            next_tick += 1.0
        aggs, summary = frame_outputs(site, limits, f)
        if pending and pending[-1].ts_s != summary.ts_s:
            out = stage.add_batch(RackSummaryBatch.of(pending))
            pending = []
            for h in out.headroom:
                ctl.on_headroom(h, f.ts_s)
            aggs = aggs + out.aggregates
        pending.append(summary)
        ctl.on_frame(f)
        for a in aggs:
            ctl.on_aggregate(a, f.ts_s)
    return [(c.target, c.action, c.values) for c in eng.result.commands], live


def test_cli_replay_engine_reports_without_a_broker(tmp_path: Path, capsys: object, monkeypatch: object) -> None:
    frames = _frames(n=12)
    w = RecordingWriter(tmp_path / "rec", [topics.TELEMETRY.name])
    for i, f in enumerate(frames):
        w.add(Recorded(topics.TELEMETRY.name, 0, i, int(f.ts_s * 1000), f.key(), f.encode(), []))
    w.close()
    monkeypatch.setenv("PP_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # type: ignore[attr-defined]
    monkeypatch.setenv("PP_SIGNING_KEY_FILE", str(tmp_path / "keys"))  # type: ignore[attr-defined]
    rc = main(["replay", str(tmp_path / "rec"), "--engine", "--commands-out", str(tmp_path / "cmds.jsonl")])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert rc == 0 and "cap command(s)" in out and "racks capped: rack-01" in out, out
    assert (tmp_path / "cmds.jsonl").read_text().count("\n") >= 8
