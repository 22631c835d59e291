"""Physical and temporal plausibility of telemetry (powerplane/plausibility.py) and the finite checks of every
wire record's decode: what a bad day or an attacker sends is refused with a reason or marked, never truth."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import msgpack
import numpy as np
import pytest

from powerplane.plausibility import FrameChecker, PlausibilitySettings
from powerplane.schemas import (
    Ack,
    Command,
    Event,
    Headroom,
    LevelAggregate,
    RackSummaryBatch,
    SchemaError,
    TelemetryFrame,
)
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")
EPOCH = 1_790_000_000.0


def seconds(n: int, lose_at: int | None = None) -> list[list[TelemetryFrame]]:
    fleet = Fleet(SITE, seed=4, epoch_s=EPOCH)
    out = []
    for k in range(1, n + 1):
        if k == lose_at:
            fleet.lose_feed("A")
        fr = fleet.step(1.0)
        out.append(rack_frames(SITE, fr, EPOCH + k, 1.0, k, "sim"))
    return out


def warm(chk: FrameChecker, n: int = 5) -> list[list[TelemetryFrame]]:
    secs = seconds(n + 10)
    for frames in secs[:n]:
        for f in frames:
            assert chk.check(f, f.ts_s).frame is f
    return secs[n:]


def test_valid_frames_are_taken_as_they_are_even_through_a_feed_loss() -> None:
    chk = FrameChecker(SITE)
    for frames in seconds(60, lose_at=20):
        for f in frames:
            v = chk.check(f, f.ts_s + 0.2)
            assert v.frame is f and not v.marks and not v.reason, v
    assert chk.counts.accepted == 60 * SITE.n_racks and chk.counts.seq_gaps == 0
    assert not chk.counts.refused and not chk.counts.marked


@pytest.mark.parametrize(("shift_s", "words"), [(3600.0, "3600.0 s ahead"), (-30 * 86400.0, "2592000 s old"),
                                                (None, "old")])
def test_frames_dated_far_ahead_or_long_ago_are_refused_with_the_field_and_value(shift_s: float | None,
                                                                                  words: str) -> None:
    chk = FrameChecker(SITE)
    f = seconds(1)[0][2]
    bad = dataclasses.replace(f, ts_s=3600.0 if shift_s is None else f.ts_s + shift_s)  # None: 1970
    v = chk.check(bad, f.ts_s)
    assert v.refused and "field 'ts_s'" in v.reason and words in v.reason and "rack-03" in v.reason, v.reason
    assert chk.check(dataclasses.replace(f, ts_s=f.ts_s - 600), f.ts_s).frame is not None  # late: taken


def test_out_of_range_readings_are_refused_naming_field_index_and_value() -> None:
    f = seconds(1)[0][0]
    cases = {
        "pdu_power_w": dataclasses.replace(f, pdu_power_w=[-1e9, f.pdu_power_w[1]]),
        "pdu_power_w'[1] = 1e+300": dataclasses.replace(f, pdu_power_w=[f.pdu_power_w[0], 1e300]),
        "inlet_c'[0] = 1e+06": dataclasses.replace(f, inlet_c=[1e6, 20.0]),
        "inlet_c'[1] = -1e+06": dataclasses.replace(f, inlet_c=[20.0, -1e6]),
        "power_w'[3] = 2000": dataclasses.replace(f, power_w=np.where(np.arange(f.power_w.size) == 3, 2000.0,
                                                                       f.power_w).astype(np.float32)),
        "limit_w'[0] = 10000": dataclasses.replace(f, limit_w=np.full_like(f.limit_w, 1e4)),
    }
    for words, frame in cases.items():
        v = FrameChecker(SITE).check(frame, f.ts_s)
        assert v.refused and f"field '{words}" in v.reason, (words, v.reason)
    # The schema already refuses what no site could have: an infinite meter, a bool for a version.
    wire = f.to_wire()
    with pytest.raises(SchemaError, match="pdu_power_w"):
        TelemetryFrame.from_wire({**wire, "pdu_power_w": [math.inf, 1.0]})
    with pytest.raises(SchemaError, match="field 'v' = True"):
        TelemetryFrame.from_wire({**wire, "v": True})
    with pytest.raises(SchemaError, match="seq"):
        TelemetryFrame.from_wire({**wire, "seq": -1})


def test_duplicates_are_dropped_gaps_counted_and_a_restarted_count_taken() -> None:
    chk = FrameChecker(SITE)
    rest = warm(chk)
    f = rest[0][0]
    assert chk.check(f, f.ts_s).frame is f
    dup = chk.check(f, f.ts_s)
    assert dup.dropped and dup.frame is None and "seq 6" in dup.reason and chk.counts.duplicates == 1
    later = rest[3][0]  # seq 9 after 6: two missing
    assert chk.check(later, later.ts_s).frame is later and chk.counts.seq_gaps == 2
    restarted = dataclasses.replace(rest[4][0], seq=1)  # a restarted collector counts from 1, newer event time
    assert chk.check(restarted, restarted.ts_s).frame is restarted and chk.counts.seq_resets == 1


def test_a_meter_jump_no_breaker_allows_is_marked_until_the_new_level_is_seen_in_a_row() -> None:
    chk = FrameChecker(SITE)
    rest = warm(chk)
    rated = float(chk.pdu_rated_w[0, 0])
    vs = []
    for k in range(4):
        f = dataclasses.replace(rest[k][0], pdu_power_w=[2.5 * rated, rest[k][0].pdu_power_w[1]])
        vs.append(chk.check(f, f.ts_s))
    for v in vs[:2]:  # taken, but not the meter: NaN in what the roll-up sees, counted, with a reason
        assert v.frame is not None and math.isnan(v.frame.pdu_power_w[0]) and "jumped" in v.marks[0]
        assert math.isfinite(v.frame.pdu_power_w[1])
    assert vs[2].frame is not None and vs[2].frame.pdu_power_w[0] == 2.5 * rated  # seen 3 times: real
    assert chk.counts.marked["pdu_jump"] == 2


def test_inlet_jump_and_stuck_meter_are_marked() -> None:
    chk = FrameChecker(SITE, PlausibilitySettings(stuck_frames=5))
    rest = warm(chk)
    f = rest[0][1]
    v = chk.check(dataclasses.replace(f, inlet_c=[f.inlet_c[0] + 40.0, f.inlet_c[1]]), f.ts_s)
    assert v.frame is not None and math.isnan(v.frame.inlet_c[0]) and "inlet_c'[0]" in v.marks[0]
    stuck = rest[1][1].pdu_power_w[0]
    marks: list[str] = []
    for k in range(1, 8):
        g = rest[k][1]
        g = dataclasses.replace(g, pdu_power_w=[stuck, g.pdu_power_w[1]],
                                power_w=(g.power_w * (1.0 - 0.1 * k)).astype(np.float32))
        marks += chk.check(g, g.ts_s).marks
    assert marks and "stuck meter" in marks[-1], marks


def test_in_event_time_one_source_cannot_move_the_clock_but_the_whole_site_can() -> None:
    chk = FrameChecker(SITE)
    rest = warm(chk)
    f = rest[0][4]
    v = chk.check(dataclasses.replace(f, ts_s=f.ts_s + 3600), None)  # a replay, no receiver's clock
    assert v.refused and "ahead of event time" in v.reason
    assert chk.newest_s < f.ts_s + 1
    # A recording that skips ahead 10 minutes for every rack: followed once most sources confirm it.
    taken = [chk.check(dataclasses.replace(g, ts_s=g.ts_s + 600), None).frame is not None for g in rest[1]]
    assert taken[-1] and sum(taken) >= SITE.n_racks // 2 - 1


def test_decode_refuses_non_finite_numbers_in_every_record_with_the_field() -> None:
    agg = LevelAggregate(site="s", level="pdu-a01", kind="pdu", ts_s=1.0, window_s=1.0, power_w=1.0, limit_w=2.0,
                         rated_w=2.0, mode="normal", gpus_expected=1, gpus_reporting=1)
    cmd = Command(id="c", site="s", target="rack-01", action="power_cap", gpus=np.zeros(1, np.uint16),
                  values=np.ones(1, np.float32), params={}, reason="r", issuer="i", issued_at_s=1.0, lease_s=30.0)
    ack = Ack(command_id="c", site="s", target="rack-01", status="applied", gpus=np.zeros(1, np.uint16),
              applied=np.ones(1, np.float32), reason="", actuator="a", ts_s=1.0)
    ev = Event(id="e", site="s", kind="feed_loss", severity="critical", state="open", levels=["util-a"], ts_s=1.0,
               deadline_s=None, summary="x")
    head = Headroom(site="s", level="l", kind="pdu", ts_s=1.0, mode="normal", horizon_s=5.0, power_w=1.0,
                    limit_w=2.0, forecast_p50_w=1.0, forecast_p99_w=1.0, headroom_w=1.0)
    for rec, name in ((agg, "ts_s"), (agg, "power_w"), (cmd, "issued_at_s"), (ack, "ts_s"), (ev, "ts_s"),
                      (head, "headroom_w")):
        for bad in (math.nan, math.inf, -math.inf):
            wire = rec.to_wire()
            wire[name] = bad
            with pytest.raises(SchemaError, match=f"field '{name}' = (nan|inf|-inf) is not a finite number"):
                type(rec).decode(msgpack.packb(wire))
        assert type(rec).decode(rec.encode()).ts_s == 1.0 if hasattr(rec, "ts_s") else True  # valid: decodes
    batch = RackSummaryBatch.of([])
    wire = batch.to_wire()
    wire.update(racks=["r"], ts_s=np.array([math.nan]).tobytes(), power_w=np.ones(1).tobytes(),
                **{k: np.ones(1).tobytes() for k in ("pdu_a_w", "pdu_b_w", "inlet_c", "gpu_temp_max_c")},
                **{k: np.ones(1, np.uint32).tobytes() for k in ("gpus_expected", "gpus_reporting", "gpus_throttled")})
    with pytest.raises(SchemaError, match="field 'ts_s'\\[0\\] = nan is not a finite number"):
        RackSummaryBatch.from_wire(wire)


def test_the_per_source_table_is_bounded() -> None:
    chk = FrameChecker(SITE)
    f = seconds(1)[0][0]
    for i in range(chk.max_sources + 10):
        chk.check(dataclasses.replace(f, source=f"forged-{i}"), f.ts_s)
    assert len(chk.sources) == chk.max_sources and chk.counts.evicted == 10
