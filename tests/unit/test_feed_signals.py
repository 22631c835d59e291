"""Facility signals in the site stage and the controller (streams.feed_signals, controllers.facility): a UPS
on battery is acted on at once, and the PDU meters confirm or refute it within the bound (docs/safety.md)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from collectors.base import SourceContext
from controllers.capping import CapSettings
from controllers.controller import CapController
from ops.engine import Engine
from powerplane.facility_checks import SIGNAL_BOUND_S
from powerplane.schemas import Event, FacilityReading, LevelAggregate, RackSummary, RackSummaryBatch, TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site import Site
from powerplane.site_file import load_site
from sim.fleet import Fleet
from sim.source import FleetSource
from streams.rollup import Limits, frame_outputs
from streams.site_stage import SiteStage, StageOutput

ROOT = Path(__file__).resolve().parents[2]
KEYS = Keyring({"k1": b"k" * 32}, "k1")
TRAP_AT = 10  # seconds into the run


def _site() -> Site:
    return load_site(ROOT / "examples" / "lab.toml")


def _frames(site: Site, n: int, lose_at: int | None) -> list[list[TelemetryFrame]]:
    """The lab fleet's frames, a list per second; feed A really lost at `lose_at` (None: never)."""
    fleet = Fleet(site, seed=4, epoch_s=1_790_000_000.0)
    src = FleetSource("sim", {"interval_s": 1.0}, SourceContext(site=site, plant=fleet))
    out = []
    for i in range(n):
        if i == lose_at:
            fleet.lose_feed("A")
        out.append(src.read_batch())
    return out


def _trap(site: Site, ts_s: float, lineup: str = "ups-a", on_battery: bool = True) -> FacilityReading:
    return FacilityReading(site=site.name, unit=lineup, kind="ups", ts_s=ts_s, interval_s=10.0, seq=int(ts_s * 10),
                           source="ups-trap", lineup=lineup, on_battery=on_battery, via="trap",
                           trap="upsTrapOnBattery" if on_battery else "upsTrapReturnFromBattery")


class Run:
    """The engine over the lab fleet with a trap at TRAP_AT, keeping what its site stage published."""

    def __init__(self, seconds: int, lose_at: int | None, trap: bool = True, off_at: tuple[int, ...] = (),
                 again_at: int | None = None) -> None:
        self.site = _site()
        self.eng = Engine(self.site, KEYS, CapSettings(), 30.0)
        self.outs: list[StageOutput] = []
        add = self.eng.stage.add_batch

        def keep(*a: object, **k: object) -> StageOutput:
            out = add(*a, **k)  # type: ignore[arg-type]
            self.outs.append(out)
            return out

        self.eng.stage.add_batch = keep  # type: ignore[method-assign]
        self.trap_ts = 0.0
        self.at_trap: list[object] = []
        for i, second in enumerate(_frames(self.site, seconds, lose_at)):
            if i == TRAP_AT and trap:
                self.trap_ts = second[0].ts_s - 0.5
                self.at_trap = self.eng.feed_facility(_trap(self.site, self.trap_ts), self.trap_ts + 0.05)
            if i in off_at:  # the UPS's own poll: online
                ts = second[0].ts_s - 0.5
                self.eng.feed_facility(_trap(self.site, ts, on_battery=False), ts + 0.05)
            if i == again_at:
                ts = second[0].ts_s - 0.5
                self.eng.feed_facility(_trap(self.site, ts), ts + 0.05)
            for f in second:
                self.eng.feed_frame(f)
        self.eng.finish()

    def aggs(self, level: str) -> list[LevelAggregate]:
        return [a for o in self.outs for a in o.aggregates if a.level == level]

    def events(self, kind: str, state: str = "open") -> list[object]:
        return [e for e in self.eng.result.events if e.kind == kind and e.state == state]


def test_a_trap_puts_the_lineup_lost_unconfirmed_at_once_and_the_controller_caps_feed_b() -> None:
    r = Run(TRAP_AT + 8, lose_at=None)
    # The controller decides in the same call as the trap: caps on the racks, whose B PDUs now carry everything.
    caps = [c for c in r.at_trap if getattr(c, "reason", "").startswith("shedding")]
    assert caps and {c.target for c in caps} == set(r.site.rack_ids)  # type: ignore[attr-defined]
    # ... for the surviving side: feed B's RPP now carries the whole row (its meters have not moved yet).
    assert all("rpp-b1" in c.reason for c in caps)  # type: ignore[attr-defined]
    # The very next window: every level under feed A is lost (unconfirmed), the surviving side at its full limit.
    after = [a for a in r.aggs("ups-a") if a.ts_s > r.trap_ts]
    before = [a for a in r.aggs("ups-a") if a.ts_s <= r.trap_ts - 1]
    assert before[-1].feed_signal is None and before[-1].limit_w > 0
    assert after[0].feed_signal == "unconfirmed" and after[0].limit_w == 0.0 and after[0].mode == "A-lost"
    assert next(a.feed_signal for a in r.aggs("util-a") if a.ts_s > r.trap_ts) == "unconfirmed"
    assert all(a.feed_signal is None and a.limit_w > 0 for a in r.aggs("ups-b"))
    # The emergency opens at once, marked unconfirmed.
    loss = r.events("feed_loss")
    assert len(loss) == 1 and loss[0].details["signal_unconfirmed"] == 1.0  # type: ignore[attr-defined]
    assert loss[0].ts_s - r.trap_ts <= 1.0  # type: ignore[attr-defined]


def test_meters_confirm_a_real_loss_with_no_second_page() -> None:
    # The UPS knows first; the PDU meters show the loss 10 s later (their SNMP refresh).
    r = Run(TRAP_AT + 30, lose_at=TRAP_AT + 10)
    loss = r.events("feed_loss")
    assert len({e.id for e in loss}) == 1  # type: ignore[attr-defined]
    assert [e.details["signal_unconfirmed"] for e in loss] == [1.0, 0.0]  # type: ignore[attr-defined]
    assert not r.events("ups_loss") and not r.events("faulty_signal")
    assert r.eng.stage.signals.counts.confirmed == 1 and r.eng.stage.signals.counts.refuted == 0
    late = r.aggs("ups-a")[-1]
    assert late.limit_w == 0.0 and late.feed_signal is None  # the meters carry the state now


def test_a_false_trap_is_rolled_back_within_the_bound_with_one_faulty_signal() -> None:
    r = Run(TRAP_AT + 70, lose_at=None)
    faulty = r.events("faulty_signal")
    assert len(faulty) == 1 and faulty[0].severity == "warning"  # type: ignore[attr-defined]
    assert faulty[0].ts_s - r.trap_ts <= SIGNAL_BOUND_S + 1.0  # type: ignore[attr-defined]
    assert r.eng.stage.signals.counts.refuted == 1
    back = [a for a in r.aggs("ups-a") if a.ts_s > r.trap_ts + SIGNAL_BOUND_S + 1.0]
    assert back and all(a.feed_signal is None and a.limit_w > 0 and a.mode == "normal" for a in back)
    assert [e.id for e in r.events("feed_loss", "resolved")] == [e.id for e in r.events("feed_loss")]  # type: ignore[attr-defined]
    # The controller takes its caps off through its normal hysteresis.
    releases = [c for c in r.eng.result.commands if c.reason.startswith("releasing caps")]
    assert releases and min(c.issued_at_s for c in releases) > r.trap_ts + SIGNAL_BOUND_S


def test_a_trap_the_ups_itself_ends_unseen_by_the_meters_raises_one_warning_and_a_later_trap_still_acts() -> None:
    # On battery, then the UPS's polls say online (5 s and 15 s later); the meters never saw a loss. Then a
    # second on-battery trap: a brief transfer and a false trap look alike, so the lineup is not muted.
    r = Run(TRAP_AT + 40, lose_at=None, off_at=(TRAP_AT + 5, TRAP_AT + 15), again_at=TRAP_AT + 30)
    warn = r.events("faulty_signal")
    assert len(warn) == 1 and warn[0].details["ended_by_ups"] == 1.0  # type: ignore[attr-defined]
    assert warn[0].ts_s - r.trap_ts <= 6.0 and "check the UPS's event log" in warn[0].summary  # type: ignore[attr-defined]
    counts = r.eng.stage.signals.counts
    assert counts.refuted == 0 and counts.cleared == 1 and counts.unexplained == 1 and counts.ignored == 0
    assert counts.started == 2  # the second trap put the lineup lost (unconfirmed) again, at once
    again = [a for a in r.aggs("ups-a") if a.ts_s > r.trap_ts + 20.0]
    assert again[0].feed_signal is None and again[-1].feed_signal == "unconfirmed" and again[-1].limit_w == 0.0


def test_a_signal_the_ups_ends_is_resolved_after_its_hold() -> None:
    r = Run(TRAP_AT + 12, lose_at=None, off_at=(TRAP_AT + 5,))
    sig = r.eng.stage.signals
    (f,) = sig.unexplained.values()
    assert f.opened_s - r.trap_ts == 5.0 and sig.s.unexplained_hold_s >= 60.0  # open long enough to notify


def test_an_old_trap_and_an_unknown_lineup_are_refused_with_their_line() -> None:
    site = _site()
    eng = Engine(site, KEYS, CapSettings(), 30.0)
    t = 1_790_000_000.0
    assert eng.feed_facility(_trap(site, t), received_s=t + SIGNAL_BOUND_S + 5) == []
    assert eng.feed_facility(_trap(site, t + 40, lineup="ups-z"), received_s=t + 40) == []
    reasons = list(eng.result.dead_letters)
    assert any("30.0 s old: past the 25 s confirmation bound, not acted on" in x for x in reasons), reasons
    assert any("'lineup' = 'ups-z' is not a UPS lineup of site 'lab'" in x for x in reasons), reasons
    assert not eng.stage.signals.signals and not eng.controller.signals.since


def test_engine_and_the_stage_plus_controller_path_give_the_same_commands_on_a_trap() -> None:
    site = _site()
    seconds = _frames(site, TRAP_AT + 30, lose_at=None)
    eng = Engine(site, KEYS, CapSettings(), 30.0)
    ctl = CapController(site, KEYS, CapSettings(), 30.0)
    limits, stage = Limits(site), SiteStage(site)
    pending: list[RackSummary] = []
    live: list[tuple[str, np.ndarray]] = []
    next_tick = seconds[0][0].ts_s + 1.0
    for i, second in enumerate(seconds):
        if i == TRAP_AT:  # the streams worker's facility input and the controller's, then its urgent decision
            trap = _trap(site, second[0].ts_s - 0.5)
            eng.feed_facility(trap, trap.ts_s + 0.05)
            assert not stage.add_facility(trap, trap.ts_s + 0.05).refused
            urgent, why = ctl.on_facility(trap, trap.ts_s + 0.05)
            assert urgent and not why
            live += [(c.target, c.values) for c in ctl.decide(trap.ts_s + 0.05)]
        for f in second:
            eng.feed_frame(f)
            while f.ts_s >= next_tick:
                live += [(c.target, c.values) for c in ctl.decide(next_tick)]
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
    mine = [(c.target, c.values) for c in eng.result.commands]
    assert [t for t, _ in mine] == [t for t, _ in live] and len(mine) > len(site.rack_ids)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(mine, live, strict=True))


def _sensor_events(offset_c: float, seconds: int, agree_from: int | None = None) -> list[Event]:
    """The site stage's facility events over the lab fleet with a Geist-style env sensor on rack-02 reading the
    servers' own inlet (its last rack aggregate) + `offset_c` once a second; from second
    `agree_from` on it reads the servers' inlet."""
    site = _site()
    eng = Engine(site, KEYS, CapSettings(), 30.0)
    rack = "rack-02"
    level = site.level_ids[int(site.rack_level[site.rack_index(rack)])]
    inlet_c: float | None = None
    take = eng.controller.on_aggregate

    def keep(agg: LevelAggregate, now_s: float) -> None:
        nonlocal inlet_c
        if agg.level == level and agg.inlet_c is not None:
            inlet_c = agg.inlet_c
        take(agg, now_s)

    eng.controller.on_aggregate = keep  # type: ignore[method-assign]
    for i, second in enumerate(_frames(site, seconds, None)):
        if inlet_c is not None:
            off = 0.0 if agree_from is not None and i >= agree_from else offset_c
            ts = second[0].ts_s - 0.5
            eng.feed_facility(FacilityReading(site=site.name, unit="geist-r02", kind="env", ts_s=ts, interval_s=1.0,
                                              seq=i + 1, source="geist", racks=[rack], inlet_c=[inlet_c + off]), ts)
        for f in second:
            eng.feed_frame(f)
        eng.decide_now(second[0].ts_s + 0.5)
    eng.finish()
    return [e for e in eng.result.events if e.kind == "sensor_disagreement"]


def test_an_env_sensor_5_c_off_the_servers_inlet_for_a_minute_flags_the_rack_once_and_agreeing_clears_it() -> None:
    events = _sensor_events(5.0, 100, agree_from=85)
    opened = [e for e in events if e.state == "open"]
    assert len(opened) == 1 and opened[0].levels == ["rack-02"] and opened[0].severity == "info"
    d = opened[0].details or {}
    assert abs(d["sensor_c"] - d["servers_c"] - 5.0) < 1.0  # what the operator reads: which source says what
    sustained_s = float(re.search(r"apart for (\d+) s", opened[0].summary).group(1))  # type: ignore[union-attr]
    assert 60 <= sustained_s <= 62  # flagged once the disagreement has lasted the minute, not before
    resolved = [e for e in events if e.state == "resolved"]
    assert [e.id for e in resolved] == [opened[0].id]  # agreeing again clears the same flag
    assert resolved[0].ts_s > opened[0].ts_s


def test_an_env_sensor_5_c_off_for_less_than_a_minute_is_not_flagged() -> None:
    assert _sensor_events(5.0, 60, agree_from=40) == []


def test_an_env_sensor_within_3_c_of_the_servers_inlet_never_flags() -> None:
    assert _sensor_events(2.0, 100) == []
    assert _sensor_events(-2.0, 100) == []
