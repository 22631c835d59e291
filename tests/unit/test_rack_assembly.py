"""The per-rack stage takes the partial frames real collectors publish (one server's GPUs from NVML, one PDU's
meter from SNMP, one server's power from its BMC) and assembles its rack from them (streams/assembly.py), as an
operator would see it: the same rack power as a whole-rack frame, a silent server at its limit, never 0."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from powerplane.plausibility import FrameChecker
from powerplane.schemas import LevelAggregate, RackSummary, TelemetryFrame
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames
from streams.assembly import Assembler, assembled_outputs
from streams.rollup import Limits, frame_outputs
from tests.partial_frames import bmc_frame, pdu_frames, server_frames

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")
LIMITS = Limits(SITE)
EPOCH = 1_790_000_000.0


def whole_frames(seconds: int) -> list[list[TelemetryFrame]]:
    """Per second, the fleet's whole-rack frames (rack 0 first)."""
    fleet = Fleet(SITE, seed=11, epoch_s=EPOCH)
    return [rack_frames(SITE, fleet.step(1.0), EPOCH + k, 1.0, k, "sim") for k in range(1, seconds + 1)]


def take(asm: Assembler, chk: FrameChecker, frames: list[TelemetryFrame]
         ) -> list[tuple[list[LevelAggregate], RackSummary]]:
    out = []
    for f in frames:
        v = chk.check(f, f.ts_s)
        assert v.frame is not None, v.reason
        out += assembled_outputs(SITE, LIMITS, asm, v.frame)
    return out


def rack_agg(aggs: list[LevelAggregate]) -> LevelAggregate:
    return next(a for a in aggs if a.kind == "rack")


def test_a_rack_from_its_servers_pdus_and_bmc_has_the_power_of_the_whole_rack_frame() -> None:
    whole = whole_frames(1)[0][0]
    want_aggs, want = frame_outputs(SITE, LIMITS, whole)
    srv = SITE.rack_server_start
    model_w = SITE.rack_server_input_w(0, whole.power_w.astype(np.float64), whole.util.astype(np.float64))
    assert srv[1] - srv[0] == 8
    parts = [*pdu_frames(whole), bmc_frame(whole, 2, float(model_w[2]) * 0.9), *server_frames(whole, 0.05)]
    out = take(Assembler(SITE), FrameChecker(SITE), parts)
    assert len(out) == 1  # one view, once the last server's frame is in: not one per part
    aggs, got = out[0]
    assert got.power_w == pytest.approx(want.power_w, rel=1e-9)
    assert got.gpus_reporting == got.gpus_expected == 64 and got.pdu_power_w == want.pdu_power_w
    assert got.inlet_c == want.inlet_c and got.mode == want.mode
    assert got.ts_s == pytest.approx(whole.ts_s - 0.05 * 3.5)  # the median of its servers' times
    pdus = [a for a in aggs if a.kind == "pdu"]
    assert [a.metered_w for a in pdus] == [a.metered_w for a in want_aggs if a.kind == "pdu"]
    assert all(a.metered_w is not None for a in pdus)


def test_a_bmc_reading_above_the_model_raises_its_server_never_lowers_it() -> None:
    whole = whole_frames(1)[0][0]
    _, want = frame_outputs(SITE, LIMITS, whole)
    model_w = SITE.rack_server_input_w(0, whole.power_w.astype(np.float64), whole.util.astype(np.float64))
    out = take(Assembler(SITE), FrameChecker(SITE), [bmc_frame(whole, 2, float(model_w[2]) + 1000.0),
                                                      *server_frames(whole)])
    assert out[-1][1].power_w == pytest.approx(want.power_w + 1000.0, rel=1e-8)  # server_power_w is f32


def test_a_server_whose_collector_stops_is_taken_at_its_limit_after_the_bound_never_zero() -> None:
    asm, chk = Assembler(SITE), FrameChecker(SITE)
    seconds = whole_frames(8)
    by_t: list[RackSummary] = []
    for k, racks in enumerate(seconds):
        parts = server_frames(racks[0], 0.01)
        if k >= 2:
            parts = [f for f in parts if f.source != "nvml:host-5"]  # server 5's collector stops after 2 s
        by_t += [s for _, s in take(asm, chk, parts)]
    nan = np.float32(np.nan)  # its GPUs' power and activity unknown: at their limit, the rest at nameplate
    whole_at_limit = [dataclasses.replace(r[0], power_w=np.where(r[0].gpu_server == 5, nan, r[0].power_w),
                                          util=np.where(r[0].gpu_server == 5, nan, r[0].util)) for r in seconds]
    limit_w = [frame_outputs(SITE, LIMITS, f)[1].power_w for f in whole_at_limit]
    reading_w = [frame_outputs(SITE, LIMITS, r[0])[1].power_w for r in seconds]
    reporting = [s.gpus_reporting for s in by_t]
    # Held while its last reading is young (3 intervals of 1 s), then its 8 GPUs at their enforced limit.
    assert reporting[:4] == [64, 64, 64, 64] and set(reporting[5:]) == {56}
    last = by_t[-1]
    assert last.power_w == pytest.approx(limit_w[-1], rel=1e-9) and last.power_w > reading_w[-1]
    assert all(s.power_w > 0.5 * reading_w[0] for s in by_t)
    # A rack missing a server is emitted once per window (when the next second's first frame arrives).
    assert len(by_t) == len({math.ceil(s.ts_s) for s in by_t})


def test_a_pdu_frame_alone_does_not_make_the_rack_reporting() -> None:
    asm, chk = Assembler(SITE), FrameChecker(SITE)
    seconds = whole_frames(3)
    assert take(asm, chk, pdu_frames(seconds[0][0])) == []  # held, nothing rolled up
    out = take(asm, chk, server_frames(seconds[0][0]))
    assert len(out) == 1 and out[0][1].pdu_power_w == seconds[0][0].pdu_power_w
    # Meters keep coming, the GPUs' collectors are gone: no view, the rack is not fresh (the site stage
    # estimates it from its last reading, streams/tree.py).
    later = [dataclasses.replace(f, ts_s=EPOCH + k, seq=k) for k in (2, 3) for f in pdu_frames(seconds[k - 1][0])]
    assert take(asm, chk, later) == []
    assert asm.counts.held == 2 + 7 + 4  # PDUs, servers before the last, PDUs again


def test_a_frame_with_a_gpu_not_in_its_rack_is_refused_with_one_line() -> None:
    whole = whole_frames(1)[0][0]
    f = server_frames(whole)[3]
    bad = dataclasses.replace(f, gpu_server=np.full(f.power_w.size, 9, np.uint16))
    twice = dataclasses.replace(f, gpu_slot=np.zeros(f.power_w.size, np.uint16))
    slot = dataclasses.replace(f, gpu_slot=np.arange(8, 16, dtype=np.uint16))
    chk = FrameChecker(SITE)
    reasons = [chk.check(x, x.ts_s).reason for x in (bad, twice, slot)]
    assert reasons == [
        "telemetry.frame rack-01 from 'nvml:host-3': GPU (server 9, slot 0) not in rack-01 (8 servers)",
        "telemetry.frame rack-01 from 'nvml:host-3': GPU (server 3, slot 0) carried twice",
        "telemetry.frame rack-01 from 'nvml:host-3': GPU (server 3, slot 8) not in rack-01 (server 3 has 8 GPUs)"]
    empty = dataclasses.replace(pdu_frames(whole)[1], pdu_power_w=[math.nan, math.nan])
    assert "no reading" in chk.check(empty, empty.ts_s).reason
    assert [v.reason for v in FrameChecker(SITE).check_many([bad, twice, slot], whole.ts_s)] == reasons


def test_a_whole_rack_frame_in_another_order_is_taken_in_site_order() -> None:
    whole = whole_frames(1)[0][0]
    order = np.random.default_rng(3).permutation(whole.power_w.size)
    shuffled = dataclasses.replace(whole, **{n: getattr(whole, n)[order] for n in
                                             ("gpu_server", "gpu_slot", "power_w", "temp_c", "sm_clock_mhz",
                                              "limit_w", "util")})
    v = FrameChecker(SITE).check(shuffled, whole.ts_s)
    assert v.frame is not None
    np.testing.assert_array_equal(v.frame.power_w, whole.power_w)
    assert frame_outputs(SITE, LIMITS, v.frame)[1].power_w == frame_outputs(SITE, LIMITS, whole)[1].power_w


def test_a_worker_starting_mid_second_waits_for_every_servers_first_read_no_spike() -> None:
    asm, chk = Assembler(SITE), FrameChecker(SITE)
    first, second = whole_frames(2)
    # Started mid-second: servers 5-7 of second 1 are the first frames it reads, servers 0-4 come in second 2.
    late = [f for f in server_frames(first[0]) if f.source in ("nvml:host-5", "nvml:host-6", "nvml:host-7")]
    out = take(asm, chk, late + server_frames(second[0])[:5])
    assert len(out) == 1 and out[0][1].gpus_reporting == 64  # not 5 servers at their max for a window
    want = frame_outputs(SITE, LIMITS, second[0])[1].power_w
    assert abs(out[0][1].power_w - want) < 0.05 * want
